"""Serves a model with vLLM (its CPU build here) and writes the greedy tokens, their float32
logprobs and which nvfp4moe ops ran, as JSON:

    python serve.py MODEL OUT.json [--quantization nvfp4moe]

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so a profiler sees its ops.
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

PROMPTS = [[1, 17, 92, 301, 44, 5, 260], [1, 400, 401, 7, 7, 88], [1, 3, 250, 123, 499, 64, 32, 9]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--quantization", default=None)
    args = parser.parse_args()

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=args.model, quantization=args.quantization, dtype="bfloat16",
              skip_tokenizer_init=True, max_model_len=128, max_num_batched_tokens=128,
              max_num_seqs=4, enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, detokenize=False,
                            ignore_eos=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params)
    ops = sorted({event.key for event in profile.key_averages()
                  if event.key.startswith("nvfp4moe::")})
    result = {"tokens": [], "logprobs": [], "nvfp4moe_ops": ops}
    for output in outputs:
        completion = output.outputs[0]
        result["tokens"].append(list(completion.token_ids))
        result["logprobs"].append([step[token].logprob for step, token in
                                   zip(completion.logprobs, completion.token_ids)])
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
