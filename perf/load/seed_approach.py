"""Baseline (a): the first plan's approach, rebuilt in-process on the same token ids as the engine.

The first plan ran ``llama-embedding --pooling none`` once per request: load the model, decode the whole
prompt in embeddings mode, where llama.cpp makes every token an output (and still runs the LM head over
all of them), print every token's hidden state, and pick the marker rows. Here each request likewise loads
the model and creates a context, decodes in embeddings mode with pooling none and every token marked as
an output, copies every row, then projects and scores the marker rows as the engine does.

It is kinder to that plan than the real thing: no process start, no separate tokenizer process, no JSON
printing and parsing of ~1,000 floats per token, and the engine's batch sizes and threads. So the
engine's measured advantage over it is a lower bound.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import llama_cpp
import numpy as np

from rerank_engine.llama_runner import KV_CACHE_TYPES, LlamaRunner, RunnerOptions
from rerank_engine.projector import Projector
from rerank_engine.prompt import Block
from rerank_engine.scoring import cosine, merged_query


class SeedApproach:
    """Give it the engine's effective options (``Reranker.runner.options``), so both load the model alike."""

    def __init__(self, model_path: str, projector: Projector, options: RunnerOptions) -> None:
        self.model_path, self.projector, self.options = model_path, projector, options

    def rerank(self, blocks: Sequence[Block]) -> tuple[np.ndarray, int]:
        """Scores (input order) and tokens decoded for one request already cut into passes."""
        states = self.hidden_states(blocks)
        doc_embeddings, query_embeddings, block_scores = [], [], []
        for hidden in states:
            projected = self.projector(hidden)
            doc_embeddings.append(projected[:-1])
            query_embeddings.append(projected[-1])
            block_scores.append(cosine(projected[-1], projected[:-1]))
        query = merged_query(query_embeddings, block_scores)
        scores = cosine(query, np.concatenate(doc_embeddings).astype(np.float64)).astype(np.float32)
        return scores, sum(len(b.ids) for b in blocks)

    def hidden_states(self, blocks: Sequence[Block]) -> list[np.ndarray]:
        """Per pass, the hidden states at its documents' markers and then its query marker."""
        o = self.options
        # Loaded as the engine loads it (same model parameters), then given an embeddings-mode context.
        runner = LlamaRunner(self.model_path, o)
        ctx = batch = None
        try:
            threads = o.n_threads or len(os.sched_getaffinity(0))
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = o.n_ctx, o.n_batch, o.n_ubatch
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if o.flash_attn
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            cparams.type_k = cparams.type_v = KV_CACHE_TYPES[o.kv_cache_type]
            cparams.embeddings = True
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
            cparams.no_perf = True
            ctx = llama_cpp.llama_init_from_model(runner.model, cparams)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context with n_ctx={o.n_ctx}")
            batch = llama_cpp.llama_batch_init(o.n_batch, 0, 1)
            return [self._decode(ctx, batch, block, runner.n_embd) for block in blocks]
        finally:
            if batch is not None:
                llama_cpp.llama_batch_free(batch)
            if ctx:
                llama_cpp.llama_free(ctx)
            runner.close()

    def _decode(self, ctx: object, batch: object, block: Block, n_embd: int) -> np.ndarray:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        every_row = []
        for start in range(0, len(block.ids), self.options.n_batch):
            chunk = block.ids[start:start + self.options.n_batch]
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True  # every token an output, as llama-embedding --pooling none asks
            batch.n_tokens = len(chunk)
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status}")
            pointer = llama_cpp.llama_get_embeddings(ctx)
            every_row.append(np.ctypeslib.as_array(pointer, shape=(len(chunk), n_embd)).copy())
        return np.concatenate(every_row)[block.output_positions]
