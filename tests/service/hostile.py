"""Generated requests for the hostile-input tests: any JSON, text meant to break things, and
requests made of them, well-formed or not."""

from __future__ import annotations

from hypothesis import strategies as st

from rerank.v1 import rerank_service_pb2 as pb
from tests.service.calls import struct

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.text(max_size=50),
)


json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from("\x00\u200b\ufeff\U0001f600\u0301 aé"), max_size=100),
    st.just("x" * 70_000),
)


@st.composite
def rerank_requests(draw: st.DrawFn) -> pb.RerankRequest:
    request = pb.RerankRequest(
        model=draw(st.one_of(st.just(""), st.just("cohere/rerank-v3.5"), st.text(max_size=140))),
        query=draw(hostile_text),
    )
    kinds = draw(st.sampled_from(["text", "object", "mixed", "empty"]))
    count = draw(st.one_of(st.integers(0, 12), st.just(1001)))
    for i in range(count):
        kind = kinds if kinds in ("text", "object") else draw(st.sampled_from(["text", "object"]))
        if kinds == "empty" and i == 0:
            request.documents.add()  # neither text nor object
        elif kind == "text":
            request.documents.add(text=draw(hostile_text) if i < 12 else "doc")
        else:
            request.documents.add(
                object=struct(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=5)))
            )
    top_n = draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)))
    if top_n is not None:
        request.top_n = top_n
    if draw(st.booleans()):
        request.provider_options.CopyFrom(
            struct(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=3)))
        )
    return request
