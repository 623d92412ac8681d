"""Generation speed, printed as tables: sampler.py against transformers' generate, same run.

    python bench/bench_sampler.py [--threads 1] [--new 128]

CPU: a few-M-parameter Mistral-shaped model with random weights, batch 16, equal-length prompts, a
fixed number of new tokens (no eos), greedy (the tokens are compared too) and sampled. GPU (when
CUDA is there): random bf16 weights of the real Mistral-7B shape; batch-1 decode against the HBM
roofline (copy bandwidth measured here), and batch 64 with CUDA graphs on and off against
transformers. On CPU, the sampler with its decode step through torch.compile gets columns of its
own (a measurement, not an option of sampler.py; the compiling is timed apart). A benchmark, not a
test: it asserts nothing.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from model import ModelConfig, Transformer  # noqa: E402
from sampler import Sampler  # noqa: E402
from shepherd import POSITIVE, Parser  # noqa: E402

MISTRAL_7B = ROOT.parent / "shared" / "data" / "mistral-7b-v0.1" / "config.json"
# name: (hidden, intermediate, layers, heads, kv heads, vocab); Mistral-shaped, random weights
SHAPES = {
    "0.1M (the tests' TINY)": (64, 96, 2, 4, 2, 97),
    "1.8M": (128, 352, 4, 4, 2, 4096),
    "7.1M": (256, 704, 4, 8, 4, 8192),
}


def paired_times(fns: dict, repeats: int) -> dict:
    """The fastest of `repeats` timed runs of each function (after one untimed warm-up each), the
    functions taking turns (A B A B ...): on a shared or virtual machine the speed drifts by tens of
    percent within a minute, and interleaving exposes both sides to the same drift. CUDA is
    synchronised around each run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def best_time(fn, repeats: int) -> float:
    return paired_times({"fn": fn}, repeats)["fn"]


def hf_generate(hf, ids, new, **sampling):
    """transformers' generate of exactly `new` tokens (no eos) from equal-length prompts
    (no padding); greedy unless sampling settings are given."""
    sampling = sampling or dict(do_sample=False)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                      min_new_tokens=new, pad_token_id=0, **sampling)
    return out[:, ids.shape[1]:]


def compiled_sampler(model, max_batch, max_len) -> Sampler:
    """A what-if, not a feature: a Sampler whose eager decode step (forward + sampling, the function
    CUDA graphs capture) goes through torch.compile. dynamic: the batch bucket and the kv length
    become symbols (not one graph per value); cpp_wrapper: the compiled step is called from C++,
    not through a Python wrapper."""
    # compiled code is cached per function, not per Sampler: start each model with a clean slate
    torch._dynamo.reset()
    sampler = Sampler(model, max_batch=max_batch, max_len=max_len, cuda_graphs=False)
    sampler._decode = torch.compile(sampler._decode, dynamic=True, options={"cpp_wrapper": True})
    return sampler


def table(rows, head):
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for r in rows:
        print(" | ".join(str(x) for x in r))
    print()


def small_pair(shape):
    """transformers' Mistral with random weights and ours loaded from its save_pretrained:
    the same weights."""
    import transformers
    h, i, n, a, kv, v = shape
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=v, hidden_size=h, intermediate_size=i,
                                     num_hidden_layers=n, num_attention_heads=a,
                                     num_key_value_heads=kv, max_position_embeddings=4096,
                                     sliding_window=4096, attn_implementation="sdpa")
    hf = transformers.MistralForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = Transformer.from_pretrained(d)
    hf.generation_config.eos_token_id = None  # a fixed number of new tokens on both sides
    ours.config.eos_token_id = None
    return hf, ours


@torch.no_grad()
def cpu_section(args):
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("CPU: transformers is not installed; skipped\n")
        return
    B, P, N = 16, 64, args.new
    print(f"CPU: batch {B}, prompt {P}, {N} new tokens (no eos), "
          f"{torch.get_num_threads()} thread(s); best of {args.repeats} after a warm-up")
    rows, compile_s = [], {}
    for name, shape in SHAPES.items():
        hf, ours = small_pair(shape)
        ids = torch.randint(3, shape[-1], (B, P), generator=torch.Generator().manual_seed(1))
        prompts = ids.tolist()
        sampler = Sampler(ours, max_batch=B, max_len=P + N)
        top_p = dict(temperature=1.0, top_p=0.95)
        fns = {"hf": lambda: hf_generate(hf, ids, N),
               "ours": lambda: sampler.generate(prompts, N, temperature=0),
               "hf_p": lambda: hf_generate(hf, ids, N, do_sample=True, top_k=0, **top_p),
               "ours_p": lambda: sampler.generate(prompts, N, seed=0, **top_p)}
        # the same step through torch.compile; its first calls (the compiling) are timed apart
        if args.compile:
            compiled = compiled_sampler(ours, B, P + N)
            fns["comp"] = lambda: compiled.generate(prompts, N, temperature=0)
            fns["comp_p"] = lambda: compiled.generate(prompts, N, seed=0, **top_p)
            start = time.perf_counter()
            fns["comp"](), fns["comp_p"]()
            compile_s[name] = time.perf_counter() - start
        t = paired_times(fns, args.repeats)
        want = hf_generate(hf, ids, N).tolist()
        same = all([o.tokens for o in s.generate(prompts, N, temperature=0)] == want
                   for s in ([sampler, compiled] if args.compile else [sampler]))
        tps = lambda t: f"{B * N / t:,.0f}"  # noqa: E731
        for mode, hf_key, ours_key, comp_key in (("greedy", "hf", "ours", "comp"),
                                                 ("T=1, top-p 0.95", "hf_p", "ours_p", "comp_p")):
            row = [name, mode, tps(t[hf_key]), tps(t[ours_key]), f"{t[hf_key] / t[ours_key]:.2f}x"]
            if args.compile:
                row += [tps(t[comp_key]), f"{t[hf_key] / t[comp_key]:.2f}x"]
            rows.append(row + [("yes" if same else "NO") if mode == "greedy" else ""])
    compiled_head = ["compiled tok/s", "compiled speed-up"] if args.compile else []
    table(rows, ["model", "decoding", "transformers tok/s", "sampler.py tok/s", "speed-up",
                 *compiled_head, "same greedy tokens"])
    if args.compile:
        print("compiling (first greedy + first top-p call, once per model): "
              + ", ".join(f"{k.split()[0]} {v:.0f} s" for k, v in compile_s.items()) + "\n")


@torch.no_grad()
def workload_section(args):
    """The project's own job on CPU: the shipped synthetic policy writes solutions to 16 synthetic
    problems, prompts of different lengths, each row ending at its eos. transformers pads the
    prompts on the left and runs every row until the last one ends; the sampler packs the live rows
    into a smaller batch as rows finish and attends only over the slots in use. Tokens/s counts the
    tokens each side returns (eos included, padding not)."""
    try:
        import transformers
    except ImportError:
        print("workload: transformers is not installed; skipped\n")
        return
    import data
    from data import synthetic
    from model import Tokenizer
    B = 16
    folder = synthetic.POLICY_DIR
    ours = Transformer.from_pretrained(folder)
    hf = transformers.MistralForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    tok = Tokenizer(folder)
    prompts = [tok.encode(data.format_prompt(p.question)) for p in synthetic.load("test", B)]
    new = ours.config.max_position_embeddings - max(map(len, prompts))  # one limit for both sides
    S = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_id] * (S - len(p)) + p for p in prompts])
    att = (torch.arange(S)[None] >= torch.tensor([S - len(p) for p in prompts])[:, None]).long()
    sampler = Sampler(ours, max_batch=B, max_len=S + new)
    compiled = compiled_sampler(ours, B, S + new) if args.compile else None

    def hf_run(**sampling):  # seeded: every timed call makes the same tokens as the counted one
        torch.manual_seed(0)
        out = hf.generate(ids, attention_mask=att, max_new_tokens=new, pad_token_id=tok.pad_id,
                          eos_token_id=tok.eos_id,
                          **(sampling or dict(do_sample=False)))[:, S:].tolist()
        return [row[:row.index(tok.eos_id) + 1] if tok.eos_id in row else row for row in out]

    def ours_run(s=sampler, **sampling):
        return [o.tokens
                for o in s.generate(prompts, new, seed=0, **(sampling or dict(temperature=0)))]

    print(f"workload: the synthetic policy ({ours.num_params() / 1e6:.2f} M params), "
          f"{B} test problems, prompts {min(map(len, prompts))}-{S} tokens, "
          f"up to {new} new tokens, until eos; {torch.get_num_threads()} thread(s); "
          f"best of {args.repeats}, the two sides taking turns")
    rows = []
    for name, kw_hf, kw_ours in [("greedy", {}, {}),
                                 ("T=1 (labeling rollouts)", dict(do_sample=True, top_k=0),
                                  dict(temperature=1.0))]:
        n_hf, n_ours = (sum(map(len, f()))
                        for f in (lambda: hf_run(**kw_hf), lambda: ours_run(**kw_ours)))
        fns = {"hf": lambda: hf_run(**kw_hf), "ours": lambda: ours_run(**kw_ours)}
        if compiled:
            fns["comp"] = lambda: ours_run(compiled, **kw_ours)
        t = paired_times(fns, args.repeats)
        same = ("yes" if hf_run() == ours_run() == (ours_run(compiled) if compiled else ours_run())
                else "NO")
        speed = {k: (n_hf if k == "hf" else n_ours) / t[k] for k in t}
        row = [name, f"{speed['hf']:,.0f}", f"{speed['ours']:,.0f}",
               f"{speed['ours'] / speed['hf']:.2f}x"]
        if compiled:
            row += [f"{speed['comp']:,.0f}", f"{speed['comp'] / speed['hf']:.2f}x"]
        rows.append(row + [f"{n_hf / B:.0f} / {n_ours / B:.0f}", same if name == "greedy" else ""])
    compiled_head = ["compiled tok/s", "compiled speed-up"] if compiled else []
    table(rows, ["decoding", "transformers tok/s", "sampler.py tok/s", "speed-up", *compiled_head,
                 "mean tokens (hf / ours)", "same greedy tokens"])


def hbm_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy
    (each byte is read once and written once)."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = best_time(lambda: [y.copy_(x) for _ in range(10)], 3)
    return 2 * x.numel() * 10 / t


def mistral_7b_config() -> ModelConfig:
    """The real config.json where ../shared holds it (a device machine may not); else
    Mistral-7B-v0.1's published shape, which is ModelConfig's defaults with its 4096-token
    window."""
    return (ModelConfig.from_json(MISTRAL_7B) if MISTRAL_7B.exists()
            else ModelConfig(sliding_window=4096))


def random_mistral_7b():
    """Mistral-7B's shape with random bf16 weights,
    built on meta and materialised straight on the GPU."""
    cfg = mistral_7b_config()
    with torch.device("meta"):
        model = Transformer(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cuda").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0, 0.02)
    return model


@torch.no_grad()
def gpu_section(args):
    if not torch.cuda.is_available():
        print("GPU: no CUDA device here; skipped\n")
        return
    model = random_mistral_7b()
    model.config.eos_token_id = None
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = hbm_bandwidth()
    roofline = bandwidth / weight_bytes
    print(f"GPU: {torch.cuda.get_device_name()}, Mistral-7B shape, bf16, "
          f"{weight_bytes / 1e9:.2f} GB of weights; "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s -> batch-1 roofline {roofline:.0f} tok/s")
    P, N = 128, args.new
    g = torch.Generator().manual_seed(1)
    rows = []

    # batch 1: decode speed alone, from the difference between N new tokens and 1 (the prefill
    # cancels out)
    V = model.config.vocab_size
    prompt = torch.randint(3, V, (1, P), generator=g).tolist()
    for graphs in (True, False):
        s = Sampler(model, max_batch=1, max_len=P + N, cuda_graphs=graphs)
        t_n = best_time(lambda: s.generate(prompt, N, temperature=0), args.repeats)
        t_1 = best_time(lambda: s.generate(prompt, 1, temperature=0), args.repeats)
        tps = (N - 1) / (t_n - t_1)
        name = f"batch 1, graphs {'on' if graphs else 'off'}"
        rows.append((name, f"{tps:,.0f}", f"{100 * tps / roofline:.0f}% of roofline"))

    # batch 64: ours with graphs on and off, and transformers
    B = 64
    ids = torch.randint(3, V, (B, P), generator=g)
    results = {}
    for graphs in (True, False):
        s = Sampler(model, max_batch=B, max_len=P + N, cuda_graphs=graphs)
        results[graphs] = best_time(lambda: s.generate(ids.tolist(), N, temperature=0),
                                    args.repeats)
    try:
        import transformers
        hf_cfg = transformers.MistralConfig(**model.config.to_dict(), attn_implementation="sdpa")
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                hf = transformers.MistralForCausalLM(hf_cfg).eval()
        finally:
            torch.set_default_dtype(torch.float32)
        hf.load_state_dict(model.state_dict())
        hf.generation_config.eos_token_id = None
        t_hf = best_time(lambda: hf_generate(hf, ids.cuda(), N), args.repeats)
    except Exception as e:  # transformers absent or a different version: our rows still stand
        print(f"transformers on GPU: skipped ({type(e).__name__}: {e})")
        t_hf = None
    for graphs in (True, False):
        t = results[graphs]
        vs = f"{t_hf / t:.2f}x" if t_hf else "n/a"
        rows.append((f"batch {B}, graphs {'on' if graphs else 'off'}", f"{B * N / t:,.0f}",
                     f"{vs} transformers"))
    if t_hf:
        rows.append((f"batch {B}, transformers generate", f"{B * N / t_hf:,.0f}", "1.00x"))
    table(rows, ["GPU (greedy, prompt 128)", "new tokens/s", "note"])


def main():
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=POSITIVE, default=1,
                    help="CPU threads (1: stable numbers on a shared machine)")
    ap.add_argument("--new", type=POSITIVE, default=128, help="new tokens per row")
    ap.add_argument("--repeats", type=POSITIVE, default=5)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="leave out the CPU columns for a torch.compile'd decode step "
                         "(each model compiles for ~15-25 s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}\n")
    if not args.skip_cpu:
        cpu_section(args)
        workload_section(args)
    gpu_section(args)


if __name__ == "__main__":
    main()
