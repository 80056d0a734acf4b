"""Triton Python-backend model: adapts Triton tensors to the rerank engine, nothing more.

The contract and its checks live in ``triton_contract``; scoring in ``rerank_engine``.
Each response is sent as soon as its request is scored (the response sender works
for non-decoupled models too), so in a dynamic batch the first request does not
wait for the last. A request whose client gave up (gRPC cancellation, or its
``timeout`` parameter passed) stops being computed.
"""

from __future__ import annotations

import json
import time

import triton_contract as contract
import triton_python_backend_utils as pb_utils

from rerank_engine import InvalidInputError, Reranker

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def error_response(error: Exception) -> pb_utils.InferenceResponse:
    """The error with the engine's kind in its message (triton_contract.error_message), which is what clients
    read: over HTTP Triton answers both INVALID_ARG and CANCELLED with a 400. The code is Triton's closest."""
    codes = pb_utils.TritonError  # only while serving: Triton's auto-complete step imports this module without it
    code = {contract.INVALID_INPUT: codes.INVALID_ARG, contract.CANCELLED: codes.CANCELLED,
            contract.MODEL_LOAD: codes.UNAVAILABLE}.get(contract.error_kind(error), codes.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(contract.error_message(error), code))


def input_array(request: pb_utils.InferenceRequest, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def cancellation_check(requests: list, batch: contract.Batch):
    """``cancelled(row)``: the client cancelled, or the request's timeout (µs, counted from now) passed."""
    now = time.monotonic()
    deadlines = [now + r.timeout() / 1e6 if r.timeout() else float("inf") for r in requests]

    def cancelled(row: int) -> bool:
        index = batch.owner(row)
        return time.monotonic() > deadlines[index] or requests[index].is_cancelled()

    return cancelled


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = contract.engine_config(json.loads(args["model_config"]).get("parameters", {}),
                                        args["model_instance_kind"], int(args["model_instance_device_id"]))
        self.engine = engine = Reranker(config)
        variant = engine.runner.cpu_variant
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: serving {config.model_path} as {engine.recipe.name} "
                                 f"(sliding window: {engine.runner.sliding_window or 'none'}, query/document limits "
                                 f"{engine.config.max_query_tokens}/{engine.config.max_doc_tokens}) "
                                 f"with {config.llama}; llama.cpp CPU backend: "
                                 + (f"variant {variant}" if variant else "native build"))

    def execute(self, requests: list) -> None:
        senders = [request.get_response_sender() for request in requests]
        batch = contract.Batch()
        now, now_unix = time.monotonic(), time.time()
        for index, request in enumerate(requests):
            want = contract.DOC_EMBEDDINGS in request.requested_output_names()
            try:
                budget = contract.budget(request.parameters(), request.timeout(), now, now_unix)
                batch.add(index, contract.rows(input_array(request, contract.QUERY),
                                               input_array(request, contract.DOCUMENTS),
                                               input_array(request, contract.INSTRUCTION), want, budget), want)
            except InvalidInputError as exc:
                senders[index].send(error_response(exc), flags=FINAL)
        try:
            for row, result in self.engine.rerank_stream(batch.rows, cancellation_check(requests, batch)):
                done = batch.complete(row, result)
                if done is None:
                    continue
                index, answer = done
                if isinstance(answer, Exception):
                    senders[index].send(error_response(answer), flags=FINAL)
                else:
                    tensors = [pb_utils.Tensor(name, array) for name, array in answer.items()]
                    senders[index].send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL)
        except Exception as exc:  # an engine failure must still answer every request and keep the stub alive
            pb_utils.Logger.log_error(f"rerank failed: {exc!r}")
            for index in batch.pending():
                senders[index].send(error_response(RuntimeError(f"rerank failed: {exc}")), flags=FINAL)

    def finalize(self) -> None:
        self.engine.close()
