"""An OpenAI-compatible engine that spends time the way a GPU running vLLM does.

``profile``  the hardware/model profile (step-time coefficients, KV capacity, scheduler limits)
``clock``    simulated time: exact step durations, optionally faster than real time
``kv_cache`` KV blocks: who holds how many, what is free
``engine``   vLLM V1-style continuous batching with chunked prefill and preemption
``metrics``  Prometheus metrics under vLLM's names
``protocol`` request validation (vLLM-style 400s) and OpenAI response/chunk bodies
``server``   the aiohttp application
"""
