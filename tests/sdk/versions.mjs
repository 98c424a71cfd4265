// The Node and the SDK releases these tests run: node versions.mjs
import { GENERATIONS, print, versions } from "./sdk.mjs";

print({
  node: process.versions.node,
  sdk: Object.fromEntries(Object.keys(GENERATIONS).map((g) => [g, versions(g)])),
});
