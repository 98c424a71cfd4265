// getAvailableModels() through the AI SDK's gateway provider; prints the models it lists.
//
//   node models.mjs --sdk 7 --base-url http://127.0.0.1:PORT/v4/ai --api-key KEY
import { describe, load, options, print, provider } from "./sdk.mjs";

const values = options({});
const sdk = await load(values.sdk);
try {
  const { models } = await provider(sdk.ai, values).getAvailableModels();
  print({
    models: models.map((model) => ({
      id: model.id,
      modelType: model.modelType,
      specificationVersion: model.specification.specificationVersion,
    })),
  });
} catch (error) {
  print({ error: describe(error, sdk) });
  process.exitCode = 1;
}
