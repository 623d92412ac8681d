"""Shepherd: Math-Shepherd (Wang et al., 2023, arXiv 2312.08935) from scratch.

    python shepherd.py label    automatic process annotation by Monte-Carlo completions (§3.3)
    python shepherd.py train    the one training loop: --objective sft | prm | orm
    python shepherd.py verify   best-of-N reranking, self-consistency, PRM-weighted voting

Read top to bottom: small utilities (files, seeds, distributed, the command-line idiom),
training, labeling, verification, the CLI. Generation lives in sampler.py, grading and the
label-file formats in data/, the transformer and the PRM head in model.py.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import inspect
import io
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

import data
from data.formats import (InputError, StepExample, export, parse_solution, read_input,
                          read_step_examples, steps_field, text_field)
from model import DTYPES, ModelConfig, PRMHead, Tokenizer, Transformer, step_logits, tag_positions

ROOT = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
# Utilities: files written whole or not at all, seeds derived from ids, torch.distributed


def atomic_write(path: str | Path, data: bytes | str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None  # the bare error names no file
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no .tmp file behind


def load_model(path, what: str, dtype=torch.float32, device="cpu",
               check_only=False) -> tuple[Transformer, Tokenizer]:
    """A checkpoint and its tokenizer, checked before use: anything a user can get wrong (no such
    folder, no config or tokenizer, a truncated or misshaped shard, a tokenizer larger than the
    embedding) is an InputError. check_only: all the checks, no weights read (meta device)."""
    from safetensors import SafetensorError
    from model import resolve_checkpoint
    try:
        folder = resolve_checkpoint(path)
    except Exception as e:  # no such folder; or the hub: offline, no such repo, no access
        msg = str(e).splitlines()[0] if str(e) else ""
        raise InputError(
            f"{what}: {msg}" if msg.startswith(str(path)) else
            f"{what}: {path}: not a checkpoint folder, and the hub did not provide it "
            f"({type(e).__name__}: {msg})") from None
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name} ({what} needs a Hugging Face checkpoint folder "
                             f"with config.json, tokenizer.json and safetensors weights)")
    try:
        model = Transformer.from_pretrained(folder, dtype=dtype, device=device,
                                            check_only=check_only)
    except SafetensorError as e:
        raise InputError(f"{folder}: unreadable safetensors weights ({e})") from None
    except (ValueError, OSError) as e:  # CheckpointError, a bad config.json, an unreadable file
        raise InputError(str(e).replace("\n", " ")) from None
    try:
        tok = Tokenizer(folder)
    except Exception as e:  # the tokenizers library's parse errors have no class of their own
        raise InputError(f"{folder / 'tokenizer.json'}: not a tokenizer the tokenizers library "
                         f"reads ({e})") from None
    if tok.vocab_size > model.config.vocab_size:
        raise InputError(f"{folder / 'tokenizer.json'}: {tok.vocab_size} tokens do not fit the "
                         f"model's embedding ({model.config.vocab_size} rows): a tokenizer from "
                         f"another model?")
    return model, tok


def task_problems(task, name: str, split: str) -> list[data.Problem]:
    """task.load(split), an unknown split or missing data being the user's to fix."""
    if split not in task.SPLITS:
        raise InputError(f"--split {split}: task {name!r} has splits {', '.join(task.SPLITS)}")
    try:
        return task.load(split)
    except (OSError, ValueError) as e:
        raise InputError(str(e)) from None


def check_settings(path, saved: dict | None, now: dict, flag=lambda k: "--" + k.replace("_", "-")):
    """Resume `path` only with the settings that made it; each change is named, old -> new."""
    changed = ["the settings are not recorded"] if saved is None else \
        [f"{flag(k)} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if changed:
        raise InputError(f"{path}: made with other settings ({'; '.join(changed)}); rerun with the "
                         f"same ones to resume, or pass --restart (or a new --out) to start over")


def same_tokenizer(a: Tokenizer, b: Tokenizer, what: str):
    """Two models that read each other's tokens (generator and completer, policy and reward)."""
    if a.tok.get_vocab() != b.tok.get_vocab() or (a.prefix, a.suffix) != (b.prefix, b.suffix):
        raise InputError(f"{b.folder}: {what}'s tokenizer differs from {a.folder}'s; "
                         f"both must read the same tokens")


def device_arg(text: str) -> str:
    """--device: cpu, cuda or cuda:N, and a CUDA device only where torch has one."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, not {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: this torch build has no CUDA device (torch {torch.__version__})")
    return text


def in_range(kind, lo, hi=math.inf, lo_open=False):
    """An argparse type: finite kind(text) in [lo, hi] ((lo, hi] if lo_open), else a usage error."""
    def parse(text):
        x = kind(text)
        if not (math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi):
            raise argparse.ArgumentTypeError(f"expected {'>' if lo_open else '>='} {lo}"
                                             + (f" and <= {hi}" if hi < math.inf else "")
                                             + f", not {text}")
        return x
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


POSITIVE, COUNT, RATE = in_range(int, 1), in_range(int, 0), in_range(float, 0, lo_open=True)
FRACTION, NONNEG = in_range(float, 0, 1), in_range(float, 0)


def flag(default=None, help: str = "", **argparse_settings):
    """A config field that is also a command-line flag (add_flags): --name, its default and help."""
    return field(default=default, metadata={"help": help, **argparse_settings})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: descriptions as written, every flag's default shown."""


def add_flags(parser: argparse.ArgumentParser, config: type):
    """The one way a command line is made (shepherd.py's commands, ppo.py): a flag per field of a
    config dataclass, typed by its default unless the field says otherwise; bools are switches."""
    for f in fields(config):
        kw = dict(f.metadata)
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        elif type(f.default) in (int, float):
            kw.setdefault("type", type(f.default))
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kw)


@dataclass
class Common:  # every command's flags
    tag: str = flag(data.STEP_TAG, "step tag, as written after a space; one token or several "
                    "(then read at its last token)")
    seed: int = flag(0, "every seed derives from this (and a record's id)")
    device: str | None = flag(None, "cpu, cuda or cuda:N (None: cuda if available)",
                              type=device_arg)


@dataclass
class Signs:  # the PRM's two label tokens (train, verify)
    good: str = flag("+", "token meaning 'this step can still reach the answer' (' +' if one "
                     "token, else '+')")
    bad: str = flag("-", "token meaning 'it cannot' (' -' if one token, else '-')")


def seed_for(*parts) -> int:
    """A 63-bit seed from ids, not the run: a record's randomness never depends on what else ran."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> Dist:
    """torchrun (WORLD_SIZE > 1): a process group, gloo on CPU, NCCL on GPU; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world == 1:
        return Dist(device=device)
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, device)


def barrier(d: Dist):
    if d.world > 1:
        torch.distributed.barrier()


def progress(iterable=None, d: Dist | None = None, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=(d is not None and not d.main) or kw.pop("quiet", False),
                dynamic_ncols=True, **kw)


# ------------------------------------------------------------------------------------------------
# Training: one loop for every objective


@dataclass
class Example:
    ids: list[int]
    targets: list[float]  # sft: unused; prm/orm: one label per supervised tag
    loss_from: int = 0  # sft: the first position whose NEXT token is a response token
    tag_mask: list[bool] | None = None  # prm/orm: which tag positions are supervised


def prm_head(tok: Tokenizer, tag: str, good: str = "+", bad: str = "-") -> PRMHead:
    """The PRM's tag and +/- tokens in this tokenizer; ones it cannot give are bad input."""
    try:
        return PRMHead.from_tokenizer(tok, tag, good, bad)
    except ValueError as e:
        raise InputError(f"{tok.folder / 'tokenizer.json'}: --tag/--good/--bad: {e}") from None


def encode_sft(tok: Tokenizer, prompt: str, response: str) -> Example:
    """Prompt tokens exactly as the sampler will see them, then the response and EOS."""
    p = tok.encode(prompt)
    full = tok.encode(prompt + response, eos=False)
    resp = full[len(p):] if full[:len(p)] == p else tok.encode(response, bos=False, eos=False)
    return Example(p + resp + [tok.eos_id], [], loss_from=len(p) - 1)


def encode_steps(tok: Tokenizer, head: PRMHead, ex: StepExample, objective: str,
                 where: str = "") -> Example:
    ids = tok.encode(data.to_model_tag(ex.text, head.text))
    tags = tag_positions(ids, head.tag)  # where step_scores will read them
    if len(tags) != len(ex.labels):
        raise InputError(f"{where or ex.id}: {len(ex.labels)} labels but {len(tags)} step tags "
                         f"after tokenization")
    if objective == "orm":  # Math-Shepherd Eq. 1: ORM, one BCE per solution, read at its last tag
        mask = [i == tags[-1] for i in range(len(ids))]
        return Example(ids, [ex.outcome], tag_mask=mask)
    at = set(tags)
    mask = [i in at for i in range(len(ids))]  # Eq. 2: PRM, a BCE term for every step
    return Example(ids, list(ex.labels), tag_mask=mask)


def collate(batch: list[Example], pad_id: int, device, pack_len: int = 0) -> dict:
    """Right-padded rows, one example each; or, with pack_len, examples packed first-fit into rows
    of at most pack_len tokens (positions restart, attention stays inside each: the same loss)."""
    rows = [[e] for e in batch]
    if pack_len:
        rows = []
        for e in batch:
            fit = next((r for r in rows if sum(len(x.ids) for x in r) + len(e.ids) <= pack_len),
                       None)
            rows.append([e]) if fit is None else fit.append(e)
    S = max(sum(len(e.ids) for e in r) for r in rows)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    positions = torch.zeros(len(rows), S, dtype=torch.long)
    segments = torch.full((len(rows), S), -1, dtype=torch.long)  # -1: padding
    loss_mask = torch.zeros(len(rows), S, dtype=torch.bool)  # apart from labels: -100 is never True
    targets = []
    for b, row in enumerate(rows):
        at = 0
        for k, e in enumerate(row):
            n = len(e.ids)
            ids[b, at:at + n] = torch.tensor(e.ids)
            positions[b, at:at + n] = torch.arange(n)
            segments[b, at:at + n] = k
            if e.tag_mask is None:  # sft: positions whose NEXT token is this example's response
                loss_mask[b, at + e.loss_from:at + n - 1] = True
            else:
                loss_mask[b, at:at + n] = torch.tensor(e.tag_mask)
                targets += e.targets
            at += n
    out = {"ids": ids.to(device), "mask": loss_mask.to(device),
           "targets": torch.tensor(targets, dtype=torch.float32, device=device)}
    if pack_len:
        out["forward"] = {"positions": positions.to(device), "segments": segments.to(device)}
    return out


def objective_loss(model, batch: dict, objective: str, head: PRMHead | None):
    """Mean loss over supervised positions, plus step probabilities and targets for evaluation."""
    ids, mask = batch["ids"], batch["mask"]
    kw = batch.get("forward", {})  # packed rows: positions and sequence ids
    if objective == "sft":  # next-token cross-entropy on the response tokens
        logits = model(ids, **kw)[:, :-1]
        m = mask[:, :-1]
        loss = F.cross_entropy(logits[m].float(), ids[:, 1:][m])
        return loss, None, None
    # PRM/ORM: r = p(+) = softmax([l+, l-])[0] = sigmoid(l+ - l-) at the tag, the SAME step_logits
    # used to score. Math-Shepherd Eq. 2: L_PRM = -sum_i [y_i log r_i + (1 - y_i) log(1 - r_i)]
    logits = step_logits(model, ids, head, **kw)[mask]
    margin = logits[:, 0] - logits[:, 1]
    loss = F.binary_cross_entropy_with_logits(margin, batch["targets"])
    return loss, margin.sigmoid().detach(), batch["targets"]


def auc(scores: list[float], labels: list[float]) -> float:
    """ROC AUC (labels thresholded at 0.5): P(score of a positive > score of a negative)."""
    pos = [s for s, y in zip(scores, labels) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels) if y < 0.5]
    if not pos or not neg or any(math.isnan(s) for s in scores):
        return float("nan")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i + 1
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if ranked[k][1]) * (i + j + 1) / 2
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def lr_at(step: int, total: int, lr: float, warmup: int, min_lr: float) -> float:
    """Linear warmup, then cosine decay to min_lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


SCRATCH_SIZES = {  # (hidden, layers, heads, kv heads, mlp): Mistral-shaped, small enough for a CPU
    "tiny": (128, 4, 4, 2, 384),
    "deep": (128, 8, 4, 2, 384),
    "small": (256, 6, 8, 4, 768),
    "medium": (384, 8, 6, 2, 1024),
}


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) on the trainable parameters; no weight decay on norms and biases."""
    ps = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
         {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def scratch_model(size: str, tok: Tokenizer, max_len: int, tied: bool = True) -> Transformer:
    h, layers, heads, kv, mlp = SCRATCH_SIZES[size]
    cfg = ModelConfig(model_type="mistral", vocab_size=tok.vocab_size, hidden_size=h,
                      intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=max_len, sliding_window=None,
                      tie_word_embeddings=tied, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
    model = Transformer(cfg)
    for name, p in model.named_parameters():  # GPT-2 style init: small normal weights, unit norms
        if p.dim() == 2:  # residual projections scaled down by sqrt(2 * layers)
            torch.nn.init.normal_(
                p, std=0.02 / (math.sqrt(2 * layers)
                               if name.endswith(("o_proj.weight", "down_proj.weight")) else 1))
    return model


def load_training_examples(args, tok: Tokenizer, head: PRMHead | None) -> list[tuple[str, Example]]:
    """(id, example) pairs for the objective, from --data or from the task's own SFT records."""
    if args.objective == "sft":
        if args.data:
            rows = [(f"{args.data}:{n}",
                     {k: text_field(r, k, f"{args.data}:{n}") for k in ("prompt", "response")})
                    for n, r in read_input(args.data)]
        else:
            task = data.get_task(args.task)
            if not hasattr(task, "sft_records"):
                raise InputError(f"task {args.task!r} has no SFT records; "
                                 f"pass --data FILE with prompt/response")
            rows = [(f"{args.task}-sft-{i}", r)
                    for i, r in enumerate(task.sft_records("train", args.num_examples))]
        return [(i, encode_sft(tok, r["prompt"], data.to_model_tag(r["response"], args.tag)))
                for i, r in rows]
    if not args.data:
        raise InputError(f"--objective {args.objective} needs --data FILE "
                         f"(label records, Math-Shepherd or stepwise)")
    exs = read_step_examples(args.data, args.labels)
    return [(e.id or f"{args.data}:{k}",
             encode_steps(tok, head, e, args.objective, f"{args.data} record {k + 1}"))
            for k, e in enumerate(exs)]


def evaluate_policy(model: Transformer, tok: Tokenizer, task, problems: list,
                    max_new_tokens: int = 192, batch_size: int = 64, sampler=None,
                    tag: str = data.STEP_TAG) -> dict:
    """Greedy accuracy on problems; where the task knows the step truth, also where solutions
    first go wrong and the share of correct answers reached through a false step (what an ORM
    cannot see). `sampler`: one built on `model` (ppo.py passes its own); `tag`: its step tag."""
    from sampler import Sampler
    sampler = sampler or Sampler(model, max_batch=batch_size,
                                 max_len=model.config.max_position_embeddings)
    prompts = [tok.encode(data.format_prompt(p.question)) for p in problems]
    outs = sampler.generate(prompts, sampler.room(prompts, max_new_tokens), temperature=0.0)
    texts = [data.from_model_tag(tok.decode(o.tokens), tag) for o in outs]
    correct = [task.grade(t, p.answer) for t, p in zip(texts, problems)]
    res = {"problems": len(problems), "accuracy": sum(correct) / max(1, len(problems))}
    if hasattr(task, "step_truth"):
        first_error, lucky = {}, 0
        for t, p, c in zip(texts, problems, correct):
            truth = task.step_truth(p, data.split_steps(t))
            if False in truth:
                k = truth.index(False) + 1
                first_error[k] = first_error.get(k, 0) + 1
                lucky += c
        res["first_wrong_step"] = dict(sorted(first_error.items()))
        res["correct_with_false_step"] = lucky / max(1, sum(correct))  # share of the correct ones
    return res


def scratch_dir(path) -> bool:
    """A tokenizer folder made by this run (scratch, or with an added tag): removed at the end."""
    return (str(path).startswith(tempfile.gettempdir())
            and Path(path).name.startswith("shepherd-tokenizer-"))


@dataclass
class TrainConfig(Signs, Common):
    """Train a policy (sft), a process reward model (prm) or an outcome reward model (orm)."""
    objective: str = flag("sft", "sft: next-token loss on responses; prm: BCE at every step tag "
                          "(Eq. 2); orm: BCE at the last tag (Eq. 1)",
                          choices=["sft", "prm", "orm"])
    model: str = flag("scratch", "checkpoint folder or hub repo id to start from, or 'scratch'")
    scratch_size: str = flag("tiny", "model size with --model scratch", choices=list(SCRATCH_SIZES))
    task: str = flag("synthetic", "task (SFT records; tokenizer for scratch)",
                     choices=list(data.TASKS))
    data: str | None = flag(None, "JSONL: sft {prompt, response}; prm/orm: label records, "
                            "Math-Shepherd or stepwise")
    labels: str = flag("hard", "which labels of label records to fit", choices=["hard", "soft"])
    num_examples: int | None = flag(None, "cap on the task's SFT records", type=POSITIVE)
    out: str = flag(None, "output checkpoint folder (Hugging Face layout); resumed if it has a "
                    "trainer state", required=True)
    restart: bool = flag(False, "ignore an existing trainer state in --out")
    steps: int = flag(1000, type=POSITIVE)
    batch_size: int = flag(32, "global batch (examples per optimizer step)", type=POSITIVE)
    grad_accum: int = flag(1, type=POSITIVE)
    pack: bool = flag(False, "pack several examples into each row (less padding)")
    eval_batch_size: int = flag(64, type=POSITIVE)
    lr: float = flag(1e-3, type=RATE)
    min_lr_ratio: float = flag(0.1, "cosine schedule ends at lr x this", type=FRACTION)
    warmup: int = flag(50, type=COUNT)
    weight_decay: float = flag(0.1, type=NONNEG)
    clip: float = flag(1.0, "gradient-norm clipping", type=RATE)
    heldout: float = flag(0.05, "fraction of examples held out (by a hash of their id)",
                          type=FRACTION)
    eval_every: int = flag(200, type=POSITIVE)
    save_every: int = flag(500, type=POSITIVE)
    max_len: int = flag(256, "context length of a scratch model", type=POSITIVE)
    untie: bool = flag(False, "an LM head of its own, not tied to the input embeddings (PRM "
                       "training then moves the +/- output rows without moving the + and - "
                       "operators' embeddings)")
    add_tag_token: bool = flag(False, "if the tag is several tokens, add it to the tokenizer as "
                               "one new token (embedding row initialised to the mean, saved with "
                               "the checkpoint)")
    eval_problems: int = flag(200, "sft: greedy accuracy on this many test problems at the end",
                              type=COUNT)


# what a training run depends on: resuming with one changed would be a run of neither setting
TRAIN_SETTINGS = ("objective", "model", "scratch_size", "task", "data", "labels", "num_examples",
                  "steps", "batch_size", "lr", "min_lr_ratio", "warmup", "weight_decay", "clip",
                  "heldout", "max_len", "untie", "tag", "add_tag_token", "good", "bad", "seed")


def open_log(path: Path, keep_until: int | None, key: str):
    """A run's log.jsonl, locked against a second writer. On resume it is cut back to the
    checkpoint's record[key] (the resumed run writes what came after again); fresh, emptied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise InputError(f"{path}: another process is writing this run") from None
    f.seek(0)
    lines = f.read().splitlines(keepends=True) if keep_until is not None else []
    f.truncate(0)
    f.write("".join(x for x in lines if json.loads(x)[key] <= keep_until))
    f.flush()
    return f


def train_start(args, out: Path, resume: bool) -> tuple[Transformer, Tokenizer, Path]:
    """The model to start from, its tokenizer and the tokenizer's folder: the checkpoint being
    resumed, a checkpoint (ours, or any Mistral/Llama on the hub), or a fresh tiny one."""
    if resume:
        model, tok = load_model(out, "--out")
        tok_dir = out
    elif args.model == "scratch":
        task = data.get_task(args.task)
        tok_dir = Path(tempfile.mkdtemp(prefix="shepherd-tokenizer-"))  # same on every rank
        task.build_tokenizer(tok_dir)
        torch.manual_seed(args.seed)
        tok = Tokenizer(tok_dir)
        model = scratch_model(args.scratch_size, tok, args.max_len, tied=not args.untie)
    else:
        model, tok = load_model(args.model, "--model")
        tok_dir = model.source_dir
        if args.untie:
            model.untie()
    if tok.pad_id is None:
        tok.pad_id = tok.eos_id  # padding is masked: any id
    if (args.add_tag_token and args.objective != "sft" and len(prm_head(tok, args.tag).tag) > 1
            and not resume):
        # the tag becomes one new token with a trained embedding row, saved with the checkpoint
        model.init_token_rows([tok.add_token(args.tag)])
        tok_dir = tok.save(tok_dir if scratch_dir(tok_dir)
                           else tempfile.mkdtemp(prefix="shepherd-tokenizer-"))
    return model, tok, Path(tok_dir)


def split_heldout(examples: list[tuple], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held out) by a hash of each id: stable across runs, resumes and world sizes."""
    held = {i for i, _ in examples if seed_for("heldout", i) % 1000 < fraction * 1000}
    return [e for i, e in examples if i not in held], [e for i, e in examples if i in held]


def batch_indices(step: int, micro: int, n: int, batch_size: int, seed: int, d: Dist,
                  per_rank: int) -> list[int]:
    """This rank's share of micro-batch `micro` of a step: the step's global batch is a fixed slice
    of a per-epoch permutation of the n examples, the same on resume and on any number of ranks."""
    start, epoch = (step * batch_size) % n, (step * batch_size) // n
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    batch = (perm + perm)[start:start + batch_size]  # wrapping around the epoch's end
    k = micro * d.world + d.rank
    return batch[k * per_rank:(k + 1) * per_rank]


def heldout_metrics(model: Transformer, held: list[Example], objective: str,
                    head: PRMHead | None, pad_id: int, device, batch_size: int, amp) -> dict:
    """Held-out loss; for a reward model also the step-level accuracy (threshold 0.5) and AUC."""
    model.eval()
    losses, probs, targets = [], [], []
    with torch.no_grad(), amp:
        for i in range(0, len(held), batch_size):
            loss, p, t = objective_loss(model, collate(held[i:i + batch_size], pad_id, device),
                                        objective, head)
            losses.append(loss.item())
            if p is not None:
                probs += p.tolist()
                targets += t.tolist()
    model.train()
    res = {"heldout_loss": sum(losses) / max(1, len(losses))}
    if probs:
        res["heldout_step_acc"] = sum((p >= 0.5) == (t >= 0.5)
                                      for p, t in zip(probs, targets)) / len(probs)
        res["heldout_auc"] = auc(probs, targets)
    return res


def save_train_checkpoint(model: Transformer, out: Path, tok_dir: Path, opt, step: int,
                          settings: dict):
    """The checkpoint with the trainer's state beside it: trainer_state.pt (optimizer, step) to
    resume, or, once training is done (opt None), trainer_state.json."""
    if opt is None:
        extra = {"trainer_state.json":
                 json.dumps({"step": step, "done": True, "settings": settings}).encode()}
    else:
        buf = io.BytesIO()
        torch.save({"optimizer": opt.state_dict(), "step": step, "settings": settings}, buf)
        extra = {"trainer_state.pt": buf.getvalue()}
    from safetensors import SafetensorError
    try:
        model.save_pretrained(out, tokenizer_dir=tok_dir, extra_files=extra)
    except SafetensorError as e:  # safetensors reports a full disk as its own error
        raise InputError(f"{out}: cannot write the checkpoint ({e})") from None


@dataclass
class Trainer:
    """What an optimizer step and an evaluation need (cmd_train's loop reads as the algorithm)."""
    args: TrainConfig
    d: Dist
    model: Transformer  # the weights: evaluated and saved
    ddp: torch.nn.Module  # what forward/backward run through: the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    tok: Tokenizer
    tok_dir: Path  # saved with every checkpoint
    head: PRMHead | None
    train: list[Example]
    held: list[Example]
    amp: contextlib.AbstractContextManager  # bf16 autocast on CUDA, else off
    settings: dict  # what a resume must match
    start: int  # the first step: > 0 when resuming

    @property
    def state_file(self) -> Path:  # the last checkpoint's trainer state, if one was saved
        return Path(self.args.out) / "trainer_state.pt"

    def test_policy(self):
        """An SFT run's greedy test accuracy, printed and written beside the checkpoint."""
        a, out = self.args, Path(self.args.out)
        task = data.get_task(a.task)
        res = evaluate_policy(self.model.eval(), self.tok, task,
                              task.load("test")[:a.eval_problems], tag=a.tag)
        print(f"greedy on {res['problems']} test problems: {json.dumps(res)}")
        atomic_write(out.parent / f"{out.name}.eval.json", json.dumps(res, indent=2) + "\n")

    def save(self, step: int, done: bool = False):
        save_train_checkpoint(self.model, Path(self.args.out), self.tok_dir,
                              None if done else self.opt, step, self.settings)

    def evaluate(self) -> dict:
        a = self.args
        return heldout_metrics(self.model, self.held, a.objective, self.head, self.tok.pad_id,
                               self.d.device, a.eval_batch_size, self.amp)

    def step(self, step: int) -> dict:
        """One optimizer step: the lr schedule, gradient accumulation, clipping. Its log record."""
        a, d = self.args, self.d
        lr = lr_at(step, a.steps, a.lr, a.warmup, a.lr * a.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        per_rank = a.batch_size // (d.world * a.grad_accum)
        pack = a.pack and self.model.config.max_position_embeddings
        total = 0.0
        for micro in range(a.grad_accum):
            with self.amp:
                mine = batch_indices(step, micro, len(self.train), a.batch_size, a.seed, d,
                                     per_rank)
                batch = collate([self.train[i] for i in mine], self.tok.pad_id, d.device, pack)
                loss, _, _ = objective_loss(self.ddp, batch, a.objective, self.head)
            (loss / a.grad_accum).backward()
            total += loss.item() / a.grad_accum
        if not math.isfinite(total):
            saved = (f"the last good checkpoint is {a.out}" if self.state_file.exists()
                     else "no checkpoint was saved")
            raise InputError(f"{a.data or a.task}: loss is {total} at step {step} "
                             f"(learning rate too high? NaN in the weights?); {saved}")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip).item()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {"step": step + 1, "loss": total, "lr": lr, "grad_norm": gnorm}


def train_state(out: Path, restart: bool) -> str:
    """What --out holds: 'fresh', 'resume' (a trainer_state.pt) or 'done' (trainer_state.json)."""
    ours = (out / "trainer_state.pt").exists() or (out / "trainer_state.json").exists()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours)):
        raise InputError(f"{out}: --out exists and is not a train output (no trainer_state); "
                         f"choose another --out")
    if restart:
        return "fresh"
    return ("done" if (out / "trainer_state.json").exists() else
            "resume" if (out / "trainer_state.pt").exists() else "fresh")


def train_examples(args: TrainConfig, tok: Tokenizer, head, context: int) -> tuple[list, list]:
    """(train, held-out) examples, each checked to fit the model's context."""
    examples = load_training_examples(args, tok, head)
    too_long = [i for i, e in examples if len(e.ids) > context]
    if too_long:
        raise InputError(f"{too_long[0]}: more tokens than the model's context ({context}); "
                         f"{len(too_long)} such example(s)")
    train, held = split_heldout(examples, args.heldout)
    if not train:
        raise InputError("no training examples")
    return train, held


def print_record(rec: dict, write=print):
    write(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()}))


def make_trainer(args: TrainConfig, d: Dist, resume: bool) -> Trainer:
    """Everything training needs, validated before the first byte is written: the model (resumed,
    loaded or fresh), its examples, the optimizer (its state when resuming)."""
    out = Path(args.out)
    if args.batch_size % (d.world * args.grad_accum):
        raise InputError(f"--batch-size {args.batch_size} must be a multiple of "
                         f"world size x --grad-accum")
    settings = {k: getattr(args, k) for k in TRAIN_SETTINGS}
    settings["data_digest"] = args.data and Path(args.data).is_file() and file_digest(args.data)
    model, tok, tok_dir = train_start(args, out, resume)
    head = prm_head(tok, args.tag, args.good, args.bad) if args.objective != "sft" else None
    model = model.to(d.device).float() if d.device == "cpu" else model.to(d.device)
    try:
        train, held = train_examples(args, tok, head, model.config.max_position_embeddings)
    except InputError:  # a bad input leaves nothing behind, a scratch tokenizer included
        if scratch_dir(tok_dir):
            shutil.rmtree(tok_dir, ignore_errors=True)
        raise
    opt = adamw(model, args.lr, args.weight_decay)
    start = 0
    if resume:
        st = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)
        check_settings(out / "trainer_state.pt", st.get("settings"), settings)
        opt.load_state_dict(st["optimizer"])
        start = int(st["step"])
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.startswith("cuda")
           else torch.autocast("cpu", enabled=False))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    return Trainer(args, d, model, ddp, opt, tok, tok_dir, head, train, held, amp, settings, start)


def cmd_train(args: TrainConfig) -> int:
    d = init_distributed(args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    state = train_state(out, args.restart)
    if state == "done":
        print(f"{out}: training already finished (trainer_state.json); "
              f"pass --restart to train again")
        return 0
    T = make_trainer(args, d, state == "resume")
    if T.start and d.main:
        print(f"resuming {out} at step {T.start}")
    # the first byte written: everything above is validation
    log = (open_log(out.parent / f"{out.name}.log.jsonl", T.start or None, "step")
           if d.main else None)
    bar = None
    try:
        if T.start == 0 and T.held:  # where we start from, for comparison
            rec = {"step": 0, **T.evaluate()}
            if log:
                log.write(json.dumps(rec) + "\n")
            if d.main:
                print_record(rec)
        T.ddp.train()
        bar = progress(range(T.start, args.steps), d, desc=f"train {args.objective}",
                       initial=T.start, total=args.steps)
        t0 = time.time()
        for step in bar:
            rec = {**T.step(step), "time": time.time() - t0}
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                rec.update(T.evaluate() if T.held else {})
                print_record(rec, bar.write)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if (step + 1) % args.save_every == 0 and step + 1 < args.steps and d.main:
                T.save(step + 1)
        if d.main:
            T.save(args.steps, done=True)
    except BaseException:  # no checkpoint, no log: a run that saved nothing leaves nothing
        if bar is not None:
            bar.close()  # the error then starts a line of its own
        if log:
            log.close()
            if not T.state_file.exists():
                Path(log.name).unlink(missing_ok=True)
        raise
    finally:
        if scratch_dir(T.tok_dir):  # the tokenizer now lives in the checkpoint (or nowhere)
            shutil.rmtree(T.tok_dir, ignore_errors=True)
    barrier(d)
    if d.main:
        print(f"saved {out} ({T.model.num_params():,} parameters, {args.steps} steps, "
              f"{time.time() - t0:.0f}s)")
        if args.objective == "sft" and args.eval_problems:
            T.test_policy()
    return 0


# ------------------------------------------------------------------------------------------------
# Labeling (Math-Shepherd §3.3): N completions from the prefix ending at each step of a solution


def hard_label(correct: list[bool]) -> int:
    """Math-Shepherd Eq. 3 (hard estimation): 1 if ANY completion from the step reaches the gold."""
    return int(any(correct))


def soft_label(correct: list[bool]) -> float:
    """Math-Shepherd Eq. 4 (soft estimation): the FRACTION of completions that reach the gold."""
    return sum(correct) / len(correct)


@dataclass
class Solution:
    """A solution to label: its steps, and (when we sampled it) its tokens after the prompt."""
    problem: data.Problem
    index: int  # which of the problem's solutions
    steps: list[str]
    tokens: list[int] | None = None  # response tokens, ending with the last step's tag

    @property
    def id(self) -> str:
        return f"{self.problem.id}/{self.index}"


def solution_tokens(tok: Tokenizer, sol: Solution, head: PRMHead) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), the response cut after its last tag (no EOS or trailing text)."""
    prompt = tok.encode(data.format_prompt(sol.problem.question))
    resp = sol.tokens
    if resp is None:  # read from a file: tokenise prompt + steps as one text, as the policy would
        steps = data.to_model_tag(data.join_steps(sol.steps), head.text)
        full = tok.encode(data.format_prompt(sol.problem.question) + steps)
        resp = full[len(prompt):] if full[:len(prompt)] == prompt else tok.encode(steps, bos=False)
    ends = tag_positions(resp, head.tag)
    return prompt, resp[:ends[-1] + 1] if ends else resp


class Labeler:
    """Labels one problem's solutions at a time: a fixed unit of work, so results never depend on
    what else shares a run (resumes and torchrun shards give byte-identical records)."""

    def __init__(self, args, task, generator, completer, tok: Tokenizer, head: PRMHead):
        from sampler import Sampler
        self.args, self.task, self.tok, self.head = args, task, tok, head  # head: the step tag
        self.comp = Sampler(completer, max_batch=args.batch_size,
                            max_len=completer.config.max_position_embeddings)
        self.gen = None if generator is None else self.comp if generator is completer else \
            Sampler(generator, max_batch=args.batch_size,
                    max_len=generator.config.max_position_embeddings)
        self.stats = dict(problems=0, solutions=0, steps=0, rollouts=0, generated_tokens=0,
                          prefill_tokens=0, skipped=0)

    def sample_solutions(self, problems: list[data.Problem]) -> dict[str, list[Solution]]:
        """num_solutions samples per problem (one generate call for all), by problem id."""
        a, tok, n = self.args, self.tok, self.args.num_solutions
        if not problems:
            return {}
        prompts = [tok.encode(data.format_prompt(p.question)) for p in problems]
        ctx = self.gen.model.config.max_position_embeddings
        for p, prompt in zip(problems, prompts):
            if len(prompt) >= ctx:
                raise InputError(f"{p.id}: the prompt ({len(prompt)} tokens) does not fit the "
                                 f"generator's context")
        seeds = [seed_for(a.seed, p.id, j, "solution") for p in problems for j in range(n)]
        rows = [x for x in prompts for _ in range(n)]
        outs = self.gen.generate(rows, self.gen.room(rows, a.max_new_tokens),
                                 temperature=a.temperature, top_p=a.top_p, seeds=seeds)
        self.stats["prefill_tokens"] += sum(map(len, prompts)) * n
        sols = {p.id: [] for p in problems}
        for k, o in enumerate(outs):
            problem, j = problems[k // n], k % n
            self.stats["generated_tokens"] += len(o.tokens)
            steps = data.split_steps(data.from_model_tag(tok.decode(o.tokens), self.head.text))
            ends = tag_positions(o.tokens, self.head.tag)
            if not steps or len(ends) != len(steps):  # no tagged step, or text after the last tag
                steps = steps[:len(ends)]
            if not steps:
                self.stats["skipped"] += 1
                continue
            tokens = o.tokens[:ends[len(steps) - 1] + 1]
            sols[problem.id].append(Solution(problem, j, steps, tokens))
        return sols

    def check_fits(self, sol: Solution, prompt=None, resp=None):
        """A solution whose prompt + steps leave no room in the completer's context is bad input."""
        if prompt is None:
            prompt, resp = solution_tokens(self.tok, sol, self.head)
        ctx = self.comp.model.config.max_position_embeddings
        if len(prompt) + len(resp) >= ctx:
            where = sol.problem.meta.get("where", sol.id)
            raise InputError(f"{where}: fields 'question' + steps: {len(prompt) + len(resp)} "
                             f"tokens do not fit the completer's context ({ctx})")

    def label(self, sols: list[Solution]) -> list[dict]:
        """One prefill per solution; N rollouts forked from each non-final step, sharing batches."""
        a, tok = self.args, self.tok
        seqs, prompt_lens, forks, seeds = [], [], [], []
        for s, sol in enumerate(sols):
            prompt, resp = solution_tokens(tok, sol, self.head)
            prompt_lens.append(len(prompt))
            self.check_fits(sol, prompt, resp)
            seqs.append(prompt + resp)
            for k, end in enumerate(tag_positions(resp, self.head.tag)[:-1]):  # last: no rollouts
                forks.append((s, len(prompt) + end + 1, k))
                # one seed per step: the sampler derives each completion's from it
                seeds.append(seed_for(a.seed, sol.id, k, "rollouts"))
        ctx = self.comp.model.config.max_position_embeddings
        limits = [min(a.max_new_tokens, ctx - t) for _, t, _ in forks]  # never past the context
        outs = self.comp.fork(seqs, [(s, t) for s, t, _ in forks], limits,
                              num_samples=a.num_completions, temperature=a.temperature,
                              top_p=a.top_p, seeds=seeds) if forks else []
        self.stats["prefill_tokens"] += sum(map(len, seqs))
        # per solution, per rolled-out step: each completion's final answer and whether it is right
        answers = [[[] for _ in sol.steps[:-1]] for sol in sols]
        correct = [[[] for _ in sol.steps[:-1]] for sol in sols]
        for (s, t, k), group in zip(forks, outs):
            for o in group:
                self.stats["generated_tokens"] += len(o.tokens)
                text = data.from_model_tag(tok.decode(seqs[s][prompt_lens[s]:t] + o.tokens),
                                           self.head.text)
                answers[s][k].append(self.task.extract_answer(text))
                correct[s][k].append(self.task.grade(text, sols[s].problem.answer))
        records = []
        for s, sol in enumerate(sols):
            p = sol.problem
            own = self.task.extract_answer(data.join_steps(sol.steps))
            outcome = self.task.grade(data.join_steps(sol.steps), p.answer)
            rec = {"id": sol.id, "problem_id": p.id, "question": p.question, "gold": p.answer,
                   "steps": sol.steps, "answer": own, "correct": outcome,
                   "hard": [hard_label(c) for c in correct[s]] + [int(outcome)],  # last: graded
                   "soft": [soft_label(c) for c in correct[s]] + [float(outcome)],
                   "rollout_answers": answers[s],
                   "rollout_correct": [[int(x) for x in c] for c in correct[s]]}
            try:  # the exact step truth, where the task knows it (the synthetic world's problems)
                rec["truth"] = [int(x) for x in self.task.step_truth(p, sol.steps)]
            except (AttributeError, ValueError):
                pass
            records.append(rec)
            self.stats["steps"] += len(sol.steps)
            self.stats["rollouts"] += a.num_completions * (len(sol.steps) - 1)
        self.stats["solutions"] += len(sols)
        return records


def read_solutions(path: str, task, skip_bad: bool,
                   stats: dict) -> list[tuple[data.Problem, list[Solution]]]:
    """Solutions someone else generated, in any format parse_solution reads. The gold answer is a
    'gold'/'answer' field, or the task's problem with that question; its grader must read it."""
    def checked(n, rec):
        r = parse_solution(rec, f"{path}:{n}")
        if r.gold is not None and not task.grade(f"{data.ANSWER_PREFIX} {r.gold}", r.gold):
            raise InputError(f"{path}:{n}: field 'gold': {r.gold!r} is not an answer the "
                             f"{task.__name__} grader can read")
        return n, r
    records = []
    for n, rec in read_input(path):  # the whole file is checked before loading the task's problems
        try:
            records.append(checked(n, rec))
        except InputError:
            if not skip_bad:
                raise
            stats["skipped"] += 1
    known = {}
    for split in ("train", "test"):
        try:
            known.update({p.question.strip(): p for p in task.load(split)})
        except Exception:  # a task whose data is not available here: only explicit gold fields then
            pass
    units = []
    for n, r in records:
        problem = known.get(r.question.strip())
        if problem is None and r.gold is None:
            if not skip_bad:
                raise InputError(f"{path}:{n}: field 'gold': no gold answer (and no "
                                 f"{task.__name__} problem with this question)")
            stats["skipped"] += 1
            continue
        meta = problem.meta if problem is not None else {}
        pid = r.id or (f"{problem.id}@{Path(path).stem}-{n}" if problem is not None
                       else f"{Path(path).stem}-{n}")
        gold = r.gold if r.gold is not None else problem.answer
        problem = data.Problem(pid, r.question.strip(), gold, {**meta, "where": f"{path}:{n}"})
        units.append((problem, [Solution(problem, 0, r.steps)]))
    return units


class Progress:
    """Resumable output: records appended and flushed unit by unit. A sidecar file holds the
    settings that made them (first line), then the finished units, each with the byte offset where
    its records end. On restart, anything past the last finished unit (a torn line, a unit cut off
    by SIGKILL) is cut away and redone. The sidecar is also a lock against a second writer."""

    def __init__(self, path: Path, settings: dict, restart: bool = False):
        self.path, self.side = path, path.parent / f".{path.name}.progress"
        if path.is_dir() or (path.exists() and not self.side.exists()):
            raise InputError(f"{path}: --out exists and is not a label output; "
                             f"remove it or choose another --out")
        # the first folder this run creates: removed along with the files
        self.made = next((p for p in reversed(path.parents) if not p.exists()), None)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.side.exists()
        self.fside = open(self.side, "a+")
        try:
            self._open(settings, restart)
        except BaseException as e:
            try:
                self.fside.close()
            except OSError:
                pass
            if created:
                self.side.unlink(missing_ok=True)
                self.made and shutil.rmtree(self.made, ignore_errors=True)
            if isinstance(e, OSError) and e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.side)) from None
            raise

    def _open(self, settings: dict, restart: bool):
        path = self.path
        try:
            fcntl.flock(self.fside, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fside.close()
            raise InputError(f"{path}: another process is writing this output "
                             f"(its lock: {self.side})") from None
        self.fside.seek(0)
        lines = self.fside.read().splitlines()
        saved = (json.loads(lines[0]).get("settings")
                 if lines and lines[0].startswith('{"settings"') else None)
        self.done, end = {}, 0
        if lines and not restart and path.exists():
            check_settings(path, saved, settings, flag=lambda k: f"{k}:")  # digests are no flags
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    self.done[entry["unit"]] = end = entry["end"]
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line: that unit is redone
        if not self.done:
            self.fside.truncate(0)
            self.fside.write(json.dumps({"settings": settings}) + "\n")
        else:  # keep the settings and the finished units, drop a torn last line
            self.fside.truncate(0)
            self.fside.write("\n".join(lines[:1 + len(self.done)]) + "\n")
        self.fside.flush()
        with open(self.path, "ab") as f:
            f.truncate(end)
        self.f = open(self.path, "ab")

    def write(self, unit: str, records: list[dict]):
        try:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            self.f.write(lines.encode())
            self.f.flush()
            self.fside.write(json.dumps({"unit": unit, "end": self.f.tell()}) + "\n")
            self.fside.flush()
        except OSError as e:  # a full disk: the units finished so far stay, for the resume
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.done[unit] = self.f.tell()

    def close(self, remove: bool = False):
        """remove: nothing was finished (the run failed before its first unit), so keep nothing."""
        try:
            self.f.close()
        except OSError:  # the disk filled during the last unit: it is torn, and cut away on resume
            pass
        if remove:
            self.path.unlink(missing_ok=True)
            self.side.unlink(missing_ok=True)
            self.made and shutil.rmtree(self.made, ignore_errors=True)
        try:
            self.fside.close()
        except OSError:
            pass


def checkpoint_digest(folder) -> str:
    """What identifies a checkpoint without reading 14 GB: config, tokenizer, and each weight
    file's size, first and last MiB (the safetensors header and tensors at both ends)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if f.name in ("config.json", "tokenizer.json") or f.suffix == ".safetensors":
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(2**20))
                fh.seek(max(0, f.stat().st_size - 2**20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def quality_report(records: list[dict], max_n: int) -> dict:
    """Label accuracy against the exact step truth (the synthetic world), for N = 1, 2, 4, ...
    completions: the analogue of Math-Shepherd Table 4 / §5.2. Steps with rollouts only (the last
    step is graded, not estimated)."""
    report = {}
    for n in [k for k in (1, 2, 4, 8, 16, 32) if k <= max_n]:
        for kind in ("hard", "soft"):
            tp = fp = tn = fn = 0
            for r in records:
                for truth, c in zip(r["truth"], r["rollout_correct"]):
                    y = hard_label(c[:n]) if kind == "hard" else int(soft_label(c[:n]) >= 0.5)
                    tp, fp, tn, fn = (tp + (y and truth), fp + (y and not truth),
                                      tn + (not y and not truth), fn + (not y and truth))
            total = tp + fp + tn + fn
            report[f"{kind}@{n}"] = {
                "N": n, "labels": kind, "steps": total,
                "accuracy": (tp + tn) / total if total else float("nan"),
                "false_positive_rate": fp / (fp + tn) if fp + tn else float("nan"),
                "false_negative_rate": fn / (fn + tp) if fn + tp else float("nan")}
    return report


def show(records: list[dict], k: int):
    """The teaching view: each step, its completions' final answers, the labels (and the truth)."""
    for r in records[:k]:
        print(f"\n=== {r['id']}  gold {r['gold']}  answer {r['answer']}  "
              f"({'correct' if r['correct'] else 'wrong'})")
        print(r["question"])
        for i, step in enumerate(r["steps"]):
            truth = f"  truth {r['truth'][i]}" if "truth" in r else ""
            if i < len(r["rollout_answers"]):
                ans = " ".join("∅" if a is None else str(a) for a in r["rollout_answers"][i])
                print(f"  step {i + 1}: {step:<34} completions → [{ans}]  "
                      f"hard {r['hard'][i]} soft {r['soft'][i]:.2f}{truth}")
            else:
                print(f"  step {i + 1}: {step:<34} (last step: graded)  "
                      f"hard {r['hard'][i]} soft {r['soft'][i]:.2f}{truth}")


@dataclass
class LabelConfig(Common):
    """Automatic process annotation by Monte-Carlo completions (Math-Shepherd §3.3).

    For each problem, sample solutions; from the prefix ending at every step sample N completions;
    grade them; label the step hard (Eq. 3: any right) and soft (Eq. 4: fraction right).
    Resumable: rerun the same command to continue."""
    dtype: str = flag("float32", "weights' dtype", choices=list(DTYPES))
    task: str = flag("synthetic", choices=list(data.TASKS))
    split: str = flag("train", "which problems of the task to label")
    limit: int = flag(50, "label the first LIMIT problems", type=POSITIVE)
    model: str | None = flag(None, "generator of the solutions (default: the synthetic world's "
                             "tiny policy)")
    completer: str | None = flag(None, "model for the rollouts (default: the generator)")
    solutions: str | None = flag(None, "label these solutions instead of sampling "
                                 "(Math-Shepherd or stepwise jsonl)")
    num_solutions: int = flag(4, "solutions sampled per problem", type=POSITIVE)
    num_completions: int = flag(8, "N, completions per step (the paper: 8)", type=POSITIVE)
    temperature: float = flag(0.7, type=NONNEG)
    top_p: float = flag(1.0, type=in_range(float, 0, 1, lo_open=True))
    max_new_tokens: int = flag(128, "per solution and per completion", type=POSITIVE)
    batch_size: int = flag(64, "rows per sampler batch", type=POSITIVE)
    group: int = flag(8, "problems (or input records) sampled and labeled in shared batches: the "
                      "unit of work that a resume redoes, and that torchrun ranks share out",
                      type=POSITIVE)
    out: str = flag("runs/labels.jsonl", "records (JSONL); exports and the quality report go "
                    "beside it")
    format: tuple = flag(("records",), "extra exports written beside --out", nargs="+",
                         choices=["records", "math-shepherd", "stepwise"])
    export_labels: str = flag("hard", "labels in the stepwise export (soft: floats, which TRL's "
                              "int(label) reads as 0 below 1; soft-threshold: soft >= 0.5 as "
                              "booleans)", choices=["hard", "soft", "soft-threshold"])
    show: int = flag(0, "print K worked examples", type=COUNT, metavar="K")
    skip_bad: bool = flag(False, "count and skip bad input records instead of stopping")
    restart: bool = flag(False, "start --out afresh instead of resuming it")


# what a label output depends on: resuming with one changed would mix records made two ways
LABEL_SETTINGS = ("task", "split", "limit", "model", "completer", "solutions", "num_solutions",
                  "num_completions", "temperature", "top_p", "max_new_tokens", "group", "seed",
                  "tag", "dtype", "skip_bad")


def label_units(args, task, labeler) -> list[tuple]:
    """What label works on, as (problem, its given solutions or None to sample them): the task's
    first --limit problems, or the --solutions records, each checked to fit the completer's
    context before anything is written."""
    if not args.solutions:
        return [(p, None) for p in task_problems(task, args.task, args.split)[:args.limit]]
    fits = []
    for unit in read_solutions(args.solutions, task, args.skip_bad, labeler.stats):
        try:
            labeler.check_fits(unit[1][0])
            fits.append(unit)
        except InputError:
            if not args.skip_bad:
                raise
            labeler.stats["skipped"] += 1
    return fits


def check_label_out(args, out: Path, world: int):
    """--out is not the input, and under torchrun it is a label output or nothing yet."""
    if args.solutions and Path(args.solutions).resolve() == out.resolve():
        raise InputError(f"{out}: --out is the --solutions input; choose another --out")
    if world > 1 and (out.is_dir() or (
            out.exists() and not (out.parent / f".{out.name}.progress").exists())):
        raise InputError(f"{out}: --out exists and is not a label output; "
                         f"remove it or choose another --out")


def merge_shards(out: Path, groups: list, settings: dict, stats: dict, d: Dist) -> dict:
    """torchrun label: rank 0 merges the ranks' shards into --out in the single-process order,
    with the progress sidecar a single process would have left. Returns the summed counts."""
    gathered = [None] * d.world
    torch.distributed.all_gather_object(gathered, stats)
    barrier(d)
    if d.main:
        write_merged(out, groups, settings, d.world)
    barrier(d)
    return {k: sum(g[k] for g in gathered) for k in stats}


def write_merged(out: Path, groups: list, settings: dict, world: int):
    by_unit = {}
    for r in range(world):
        part = out.parent / f".{out.name}.rank{r}-of-{world}"
        for line in part.read_text().splitlines(keepends=True):
            by_unit.setdefault(json.loads(line)["problem_id"], []).append(line)
    text, ends = "", []
    for group in groups:
        text += "".join(line for p, _ in group for line in by_unit.get(p.id, []))
        ends.append(json.dumps({"unit": group[0][0].id, "end": len(text.encode())}) + "\n")
    atomic_write(out, text)
    atomic_write(out.parent / f".{out.name}.progress",
                 json.dumps({"settings": settings}) + "\n" + "".join(ends))
    for r in range(world):
        part = out.parent / f".{out.name}.rank{r}-of-{world}"
        part.unlink()
        (part.parent / f".{part.name}.progress").unlink()


def print_quality(report: dict):
    print("\nlabel quality against the exact step truth (steps with rollouts):")
    print(f"  {'N':>3} {'labels':<6} {'steps':>6} {'accuracy':>9} {'FP rate':>8} {'FN rate':>8}")
    for r in report.values():
        print(f"  {r['N']:>3} {r['labels']:<6} {r['steps']:>6} {r['accuracy']:>9.3f} "
              f"{r['false_positive_rate']:>8.3f} {r['false_negative_rate']:>8.3f}")


def label_models(args: LabelConfig, task, device) -> tuple:
    """(generator, or None when --solutions are given; completer; their tokenizer), checked to
    read the same tokens."""
    dtype = DTYPES[args.dtype]
    model_path = args.model or getattr(task, "POLICY_DIR", None)
    if model_path is None:
        raise InputError(f"--model is required for task {args.task!r}")
    if (args.task == "synthetic" and model_path == task.POLICY_DIR
            and not Path(model_path, "config.json").exists()):
        raise InputError(f"{model_path}: the tiny policy is missing; "
                         f"build it with: {task.POLICY_COMMAND}")
    generator, gen_tok = (None, None) if args.solutions else \
        load_model(model_path, "--model", dtype, device)
    if args.completer is None and generator is not None:
        return generator, generator, gen_tok
    completer, tok = load_model(args.completer or model_path,
                                "--completer" if args.completer else "--model", dtype, device)
    if gen_tok is not None:
        same_tokenizer(gen_tok, tok, "the completer")
    return generator, completer, tok


def label_report(args: LabelConfig, out: Path, stats: dict, seconds: tuple[float, float]):
    """After labeling: the exports, worked examples, label quality (where the truth is known)
    and the counts. seconds: (labeling, in all)."""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for fmt in args.format:
        if fmt != "records":
            atomic_write(out.with_suffix(f".{fmt}.jsonl"),
                         export(records, fmt, args.task, args.export_labels))
    if args.show:
        show(records, args.show)
    audited = [r for r in records if "truth" in r]
    if audited:
        report = quality_report(audited, args.num_completions)
        atomic_write(out.with_suffix(".quality.json"), json.dumps(report, indent=2) + "\n")
        print_quality(report)
    work, tokens = max(seconds[0], 1e-9), stats["generated_tokens"]
    print(f"\nlabeled {stats['problems']} problems, {stats['solutions']} solutions, "
          f"{stats['steps']} steps ({stats['rollouts']} rollouts); skipped {stats['skipped']}")
    print(f"tokens: {tokens} generated, {stats['prefill_tokens']} prefilled; "
          f"{tokens / work:.0f} tok/s, {stats['steps'] / work:.1f} "
          f"steps labeled/s; {seconds[1]:.1f}s in all")
    print(f"wrote {out} ({len(records)} records)")


def cmd_label(args: LabelConfig) -> int:
    d = init_distributed(args.device)
    t0 = time.time()
    task = data.get_task(args.task)
    out = Path(args.out)
    generator, completer, tok = label_models(args, task, d.device)
    labeler = Labeler(args, task, generator, completer, tok, prm_head(tok, args.tag))
    units = label_units(args, task, labeler)
    # the unit of work (see Labeler): --group consecutive problems (or input records)
    groups = [units[i:i + args.group] for i in range(0, len(units), args.group)]
    mine = groups[d.rank::d.world]  # a disjoint shard of units per rank
    shard = out if d.world == 1 else out.parent / f".{out.name}.rank{d.rank}-of-{d.world}"
    check_label_out(args, out, d.world)
    settings = {k: getattr(args, k) for k in LABEL_SETTINGS}
    settings.update(
        generator_digest=None if generator is None else checkpoint_digest(generator.source_dir),
        completer_digest=checkpoint_digest(completer.source_dir),
        input_digest=args.solutions and file_digest(args.solutions))
    # the first byte written: everything above is validation
    prog = Progress(shard, settings, args.restart)
    todo = [g for g in mine if g[0][0].id not in prog.done]
    if d.main and len(todo) < len(mine):
        print(f"resuming {out}: {len(mine) - len(todo)} of {len(mine)} units of {args.group} "
              f"already labeled")
    t_work = time.time()
    bar = progress(total=sum(map(len, todo)), d=d, desc="label", unit="problem")
    try:
        for group in todo:
            sampled = labeler.sample_solutions([p for p, sols in group if sols is None])
            sols = [s for p, given in group
                    for s in (given if given is not None else sampled.get(p.id, []))]
            prog.write(group[0][0].id, labeler.label(sols) if sols else [])
            labeler.stats["problems"] += len(group)
            bar.update(len(group))
    except BaseException:
        bar.close()  # the error then starts a line of its own
        prog.close(remove=not prog.done)  # finished units are kept for the resume
        raise
    bar.close()
    prog.close()
    work_s = time.time() - t_work
    stats = labeler.stats
    if d.world > 1:  # rank 0 merges the shards in the single-process order
        stats = merge_shards(out, groups, settings, stats, d)
    if d.main:
        label_report(args, out, stats, (work_s, time.time() - t0))
    return 0


# ------------------------------------------------------------------------------------------------
# Verification: rerank N sampled solutions per problem (Math-Shepherd Table 1; PRM800K's protocol)


def aggregate(step_scores: list[float], how: str) -> float:
    """A solution's score from its step scores: min (Math-Shepherd's), prod (PRM800K's), or last."""
    if not step_scores:
        return 0.0
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    if how == "last":
        return step_scores[-1]
    raise ValueError(f"unknown aggregation {how!r}")


def majority_vote(answers: list) -> object:
    """Self-consistency: the most frequent answer (None never votes); ties go to the first seen."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a]) if counts else None  # max keeps the first of equals


def best_of_n(answers: list, scores: list[float]) -> object:
    """The answer of the highest-scoring solution; ties go to the first."""
    return answers[max(range(len(answers)), key=lambda i: scores[i])] if answers else None


def weighted_vote(answers: list, scores: list[float]) -> object:
    """Self-consistency + reward model: argmax over answers a of sum_i 1[a_i = a] * RM(p, S_i)."""
    total = {}
    for a, s in zip(answers, scores):
        if a is not None:
            total[a] = total.get(a, 0.0) + s
    return max(total, key=lambda a: total[a]) if total else None


def rm_text(question: str, steps: list[str], style: str) -> str:
    """What a reward model reads: ours (prompt + steps, as the policy writes them) or the released
    Math-Shepherd PRM's ('question Step 1: ... ки\nStep 2: ... ки')."""
    if style == "math-shepherd":
        return question.strip() + " " + "\n".join(f"Step {i + 1}: {s} {data.STEP_TAG}"
                                                  for i, s in enumerate(steps))
    return data.format_prompt(question) + data.join_steps(steps)


@torch.no_grad()
def score_solutions(model: Transformer, tok: Tokenizer, head: PRMHead, texts: list[str],
                    batch_size: int = 32) -> list[list[float]]:
    """Every step score of every solution: one forward pass per distinct text (batched,
    right-padded, longest first; a policy's samples repeat, so copies are scored once)."""
    from model import step_scores
    distinct = list(dict.fromkeys(texts))
    if len(distinct) < len(texts):
        got = dict(zip(distinct, score_solutions(model, tok, head, distinct, batch_size)))
        return [got[t] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [None] * len(texts)
    device = next(model.parameters()).device
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    for i in progress(range(0, len(order), batch_size), desc="score", leave=False):
        idx = order[i:i + batch_size]
        ctx = model.config.max_position_embeddings
        ids = [tok.encode(data.to_model_tag(texts[j], head.text))[:ctx] for j in idx]
        batch = torch.full((len(ids), max(map(len, ids))), pad, dtype=torch.long)
        for b, x in enumerate(ids):
            batch[b, :len(x)] = torch.tensor(x)
        for j, sc in zip(idx, step_scores(model, batch.to(device), head)):
            out[j] = sc
    return out


def solution_score(rm_name: str, step_scores: list[float]) -> float:
    """What best-of-N ranks by: an ORM's score at the last tag, a PRM's minimum over its steps."""
    return aggregate(step_scores, "last" if rm_name.startswith("ORM") else "min")


def method_choices(answers: list, scores: dict[str, list[list[float]]]) -> dict[str, object]:
    """Every method's chosen answer for one problem. scores: reward model name -> step scores."""
    chosen = {"SC": majority_vote(answers)}
    for name, steps in scores.items():
        if name.startswith("ORM"):
            chosen[name] = best_of_n(answers, [solution_score(name, x) for x in steps])
        else:  # a PRM's three aggregations, each its own best-of-N
            for how in ("min", "prod", "last"):
                chosen[f"{name}-{how}"] = best_of_n(answers, [aggregate(x, how) for x in steps])
        chosen[f"SC+{name}"] = weighted_vote(answers, [solution_score(name, x) for x in steps])
    return chosen


def blind_choice(texts: list[str], right: list[bool]) -> float:
    """The expected hit of a verifier blind within a problem: its argmax is a uniformly random
    DISTINCT text (a deterministic score ties the copies of a text, and favours no right one)."""
    distinct = dict(zip(texts, right))
    return sum(distinct.values()) / len(distinct)


def best_of_n_curve(per_problem: list[dict], ns: list[int], subsets: int, seed: int) -> dict:
    """Accuracy of every method vs N: for each N, `subsets` random subsets of N solutions per
    problem (as PRM800K's evaluation does); the mean over subsets and its std.
    per_problem: {"answers": [...], "correct": {answer: bool}, "scores": {rm: [[step scores]...]}},
    and optionally "texts" (each solution's text), which adds the blind baseline ("blind")."""
    rng = random.Random(seed)
    curve = {}
    for n in ns:
        accs = {}
        for _ in range(subsets if n < min(len(p["answers"]) for p in per_problem) else 1):
            hits = {}
            for p in per_problem:
                idx = rng.sample(range(len(p["answers"])), n)
                ans = [p["answers"][i] for i in idx]
                scores = {k: [v[i] for i in idx] for k, v in p["scores"].items()}
                chosen = method_choices(ans, scores)
                for m, a in chosen.items():
                    hits[m] = hits.get(m, 0) + bool(p["correct"].get(a, False))
                if "texts" in p:
                    right = [bool(p["correct"].get(a, False)) for a in ans]
                    hits["blind"] = hits.get("blind", 0) + blind_choice(
                        [p["texts"][i] for i in idx], right)
            for m, h in hits.items():
                accs.setdefault(m, []).append(h / len(per_problem))
        curve[n] = {m: {"mean": sum(a) / len(a),
                        "std": (sum((x - sum(a) / len(a)) ** 2 for x in a) / len(a)) ** 0.5}
                    for m, a in accs.items()}
    return curve


def verifier_diagnostics(per_problem: list[dict]) -> dict[str, dict]:
    """Why best-of-N moves, per reward model:
      within_auc  P(a right solution outscores a wrong one of the SAME problem), averaged over
                  problems that have both: what reranking needs (0.5 = blind within a problem);
      pooled_auc  the same over all solutions pooled: also rewards knowing which problems are hard;
      step_auc    (tasks with step truth) every step's score against its exact truth, pooled;
      within_auc_process  within_auc with "right" = every step true (the process, not the answer).
    cmd_verify adds slip_auc where the task makes slip pairs (a step vs with its result changed)."""
    out = {}
    for name in per_problem[0]["scores"] if per_problem else []:
        within, within_proc, pooled, steps = [], [], ([], []), ([], [])
        for p in per_problem:
            s = [solution_score(name, x) for x in p["scores"][name]]
            y = [float(p["correct"].get(a, False)) for a in p["answers"]]
            pooled[0].extend(s)
            pooled[1].extend(y)
            if 0 < sum(y) < len(y):
                within.append(auc(s, y))
            if "truth" in p:
                ok = [float(all(t) and bool(t)) for t in p["truth"]]
                if 0 < sum(ok) < len(ok):
                    within_proc.append(auc(s, ok))
                for sc, t in zip(p["scores"][name], p["truth"]):
                    steps[0].extend(sc[:len(t)])
                    steps[1].extend(float(x) for x in t[:len(sc)])
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        out[name] = {"within_auc": mean(within), "problems_with_both": len(within),
                     "pooled_auc": auc(*pooled)}
        if steps[0]:
            out[name].update(step_auc=auc(*steps), within_auc_process=mean(within_proc))
    return out


@dataclass
class VerifyConfig(Signs, Common):
    """Best-of-N reranking with reward models, self-consistency, weighted voting.

    Sample S solutions per problem (or read them), score each once with every reward model, and
    report accuracy vs N for SC, ORM, PRM-min/prod/last, SC+ORM, SC+PRM."""
    dtype: str = flag("float32", "weights' dtype", choices=list(DTYPES))
    task: str = flag("synthetic", choices=list(data.TASKS))
    split: str = flag("test")
    limit: int = flag(100, "first LIMIT problems of the split", type=POSITIVE)
    model: str | None = flag(None, "generator (default: the synthetic world's tiny policy)")
    solutions: str | None = flag(None, "JSONL of solutions (problem_id or question, steps) "
                                 "instead of sampling")
    num_samples: int = flag(64, "S, solutions per problem", type=POSITIVE)
    temperature: float = flag(0.7, type=NONNEG)
    max_new_tokens: int = flag(192, type=POSITIVE)
    prm: list | None = flag(None, "a process reward model (repeatable)", action="append",
                            metavar="[NAME=]PATH")
    orm: list | None = flag(None, "an outcome reward model (repeatable)", action="append",
                            metavar="[NAME=]PATH")
    rm_format: str = flag("shepherd", "input layout the reward models were trained on "
                          "(math-shepherd: the released PRM's)",
                          choices=["shepherd", "math-shepherd"])
    subsets: int = flag(100, "random subsets per N", type=POSITIVE)
    batch_size: int = flag(64, type=POSITIVE)
    out: str = flag("runs/verify")


def split_rm(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' -> (name, path)."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else ("", spec)


def sampling_key(args) -> dict:
    """What the cached solutions depend on: reuse them only when all of it is unchanged."""
    return {k: getattr(args, k) for k in ("task", "split", "limit", "model", "num_samples",
                                          "temperature", "max_new_tokens", "seed")}


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def verify_solutions(args, task, problems: list, out: Path, dtype, device) -> tuple[list, dict]:
    """The solutions verify ranks, as (problems, steps of each problem's solutions): read from
    --solutions, reused from an earlier run with the same sampling settings, or sampled by the
    generator (seeds from ids: the same samples on a rerun)."""
    sol_file = out / "solutions.jsonl"
    if args.solutions:  # someone else's samples: records with problem_id (or question) and steps
        by_q = {p.question.strip(): p for p in problems}
        by_id = {p.id: p for p in problems}
        sols = {}
        for n, rec in read_input(args.solutions):
            p = by_id.get(rec.get("problem_id")) or by_q.get(str(rec.get("question", "")).strip())
            if p is not None:
                sols.setdefault(p.id, []).append(steps_field(rec, "steps", f"{args.solutions}:{n}"))
        problems = [p for p in problems if p.id in sols]
        if not problems:
            raise InputError(f"{args.solutions}: no record's problem_id or question is one of the "
                             f"first {args.limit} {args.task} {args.split} problems")
        sol_steps = {p.id: sols[p.id][:args.num_samples] for p in problems}
        out.mkdir(parents=True, exist_ok=True)
    elif sol_file.exists() and (out / "config.json").exists() and \
            json.loads((out / "config.json").read_text()).get("sampling") == sampling_key(args):
        sol_steps = {}
        for _, rec in read_input(sol_file):
            sol_steps.setdefault(rec["problem_id"], []).append(rec["steps"])
        print(f"reusing {sol_file}")
    else:
        from sampler import Sampler
        gen, tok = load_model(args.model or task.POLICY_DIR, "--model", dtype, device)
        out.mkdir(parents=True, exist_ok=True)
        sampler = Sampler(gen, max_batch=args.batch_size,
                          max_len=gen.config.max_position_embeddings)
        sol_steps, lines = {}, []
        for p in progress(problems, desc="sample", unit="problem"):
            prompt = tok.encode(data.format_prompt(p.question))
            outs = sampler.generate(
                [prompt] * args.num_samples, sampler.room([prompt], args.max_new_tokens)[0],
                temperature=args.temperature,
                seeds=[seed_for(args.seed, p.id, j, "verify") for j in range(args.num_samples)])
            sol_steps[p.id] = [data.split_steps(data.from_model_tag(tok.decode(o.tokens), args.tag))
                               for o in outs]
            lines += [json.dumps({"problem_id": p.id, "index": j, "steps": s}) + "\n"
                      for j, s in enumerate(sol_steps[p.id])]
        atomic_write(sol_file, "".join(lines))
        atomic_write(out / "config.json", json.dumps({"sampling": sampling_key(args)}) + "\n")
        del gen, sampler
    return problems, sol_steps


def verify_scores(args, rms: list, problems: list, sol_steps: dict, pairs: list, out: Path,
                  dtype, device):
    """(scores, slips): every solution's step scores by every reward model (scored once, cached
    beside the solutions), and each model's last-step score of the slip pairs (right, slipped)."""
    scores, slips = {}, {}
    sol_file = out / "solutions.jsonl"
    for name, path in rms:
        cache = out / f"scores.{name}.json"
        key = {"rm": str(Path(path).resolve()) if Path(path).exists() else path,
               "solutions": file_digest(args.solutions or sol_file), "format": args.rm_format,
               "slips": len(pairs)}
        if cache.exists() and json.loads(cache.read_text())["key"] == key:
            cached = json.loads(cache.read_text())
            scores[name], slips[name] = cached["scores"], cached["slips"]
            continue
        rm, tok = load_model(path, f"--{name[:3].lower()} {name}", dtype, device)
        head = prm_head(tok, args.tag, args.good, args.bad)
        flat = [(p.id, s) for p in problems for s in sol_steps[p.id]]
        question = {p.id: p.question for p in problems}
        texts = [rm_text(question[pid], s, args.rm_format) for pid, s in flat]
        got = score_solutions(rm, tok, head, texts, args.batch_size)
        if not all(math.isfinite(x) for sc in got for x in sc):
            raise InputError(f"{path}: the reward model's scores are not finite "
                             f"(NaN or inf in its weights?)")
        per = {}
        for (pid, _), sc in zip(flat, got):
            per.setdefault(pid, []).append(sc)
        scores[name] = per
        ends = [sc[-1] for sc in score_solutions(
            rm, tok, head, [rm_text(q, st, args.rm_format) for q, a, b in pairs for st in (a, b)],
            args.batch_size)]
        slips[name] = [ends[0::2], ends[1::2]]  # the score of the last step: right, slipped
        atomic_write(cache, json.dumps({"key": key, "scores": per, "slips": slips[name]}) + "\n")
        del rm
    return scores, slips


def plot_curve(curve: dict, ns: list[int], methods: list[str], path: Path):
    """results.png, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            ax.plot(ns, [curve[n][m]["mean"] for n in ns], marker="o", label=m,
                    ls="--" if m == "blind" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (solutions per problem)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    except ImportError:
        pass


def graded(task, problem, solutions: list[list[str]], scores: dict) -> dict:
    """One problem's solutions as best-of-N reads them: each one's answer and text, which answers
    are right, the reward models' step scores, and (where the task knows it) each step's truth."""
    texts = [data.join_steps(s) for s in solutions]
    answers = [task.extract_answer(t) if s else None for t, s in zip(texts, solutions)]
    correct = {a: task.grade(t, problem.answer) for a, t in zip(answers, texts) if a is not None}
    out = {"answers": answers, "correct": correct, "texts": texts, "scores": scores}
    if hasattr(task, "step_truth"):
        out["truth"] = [task.step_truth(problem, s) for s in solutions]
    return out


def cmd_verify(args: VerifyConfig) -> int:
    t0 = time.time()
    task = data.get_task(args.task)
    out = Path(args.out)
    dtype = DTYPES[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    problems = task_problems(task, args.task, args.split)[:args.limit]
    rms = [(f"PRM-{n}" if n else "PRM", p) for n, p in map(split_rm, args.prm or [])] + \
          [(f"ORM-{n}" if n else "ORM", p) for n, p in map(split_rm, args.orm or [])]
    for name, path in rms:  # every reward model is checked before anything is written
        prm_head(load_model(path, f"--{name[:3].lower()} {name}", check_only=True)[1],
                 args.tag, args.good, args.bad)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    problems, sol_steps = verify_solutions(args, task, problems, out, dtype, device)
    # where the task can make them: reference steps vs the same with an arithmetic slip
    pairs = task.slip_pairs(problems[:200], args.seed) if hasattr(task, "slip_pairs") else []
    scores, slips = verify_scores(args, rms, problems, sol_steps, pairs, out, dtype, device)
    per_problem = [graded(task, p, sol_steps[p.id], {k: v[p.id] for k, v in scores.items()})
                   for p in problems]
    S = min(len(p["answers"]) for p in per_problem)
    ns = [n for n in (2 ** k for k in range(20)) if n <= S]
    curve = best_of_n_curve(per_problem, ns, args.subsets, args.seed)
    methods = list(curve[ns[0]])
    print(f"\nbest-of-N accuracy on {len(problems)} {args.task} {args.split} problems "
          f"(mean over {args.subsets} random subsets per N; ± std; blind: a verifier that "
          f"cannot tell right from wrong within a problem)")
    print(f"{'N':>4} " + " ".join(f"{m:>16}" for m in methods))
    for n in ns:
        print(f"{n:>4} " + " ".join(f"{curve[n][m]['mean']:>9.3f} ±{curve[n][m]['std']:.3f}"
                                    for m in methods))
    diag = verifier_diagnostics(per_problem)
    for name, (right, slipped) in slips.items():
        if right:
            diag[name]["slip_auc"] = auc(right + slipped, [1.0] * len(right) + [0.0] * len(slipped))
    if diag:
        print("\nverifier diagnostics (AUC: 0.5 = blind; within: right vs wrong solutions of the "
              "same problem; slip: a reference step vs the same with its result off by a little)")
        cols = ["within_auc", "pooled_auc", "step_auc", "within_auc_process", "slip_auc"]
        print(f"{'':>12} " + " ".join(f"{c:>18}" for c in cols))
        for name, d in diag.items():
            print(f"{name:>12} " + " ".join(f"{d.get(c, float('nan')):>18.3f}" for c in cols))
    atomic_write(out / "results.json", json.dumps(
        {"problems": len(problems), "curve": curve, "diagnostics": diag}, indent=1) + "\n")
    atomic_write(out / "results.csv", "N,method,mean,std\n" + "".join(
        f"{n},{m},{curve[n][m]['mean']:.5f},{curve[n][m]['std']:.5f}\n"
        for n in ns for m in methods))
    plot_curve(curve, ns, methods, out / "results.png")
    print(f"wrote {out}/results.json, results.csv ({time.time() - t0:.0f}s)")
    return 0


# ------------------------------------------------------------------------------------------------
# The command line


COMMANDS = {"train": (TrainConfig, cmd_train), "label": (LabelConfig, cmd_label),
            "verify": (VerifyConfig, cmd_verify)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shepherd.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (config, _) in COMMANDS.items():
        add_flags(sub.add_parser(name, help=config.__doc__.splitlines()[0],
                                 description=inspect.cleandoc(config.__doc__),
                                 formatter_class=HelpFormatter), config)
    return p


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.ENOTDIR, errno.EISDIR}


def run_cli(command, argv, on_interrupt: str) -> int:
    """Every command's one error path: a user's mistake is one line and exit 2, Ctrl-C one line
    and exit 130; anything else is a bug in Shepherd and keeps its traceback."""
    try:
        return command(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {on_interrupt}", file=sys.stderr)
        return 130
    except OSError as e:  # the disk is full, read-only or not ours: the user's to fix, not a bug
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: {e.filename}: cannot write ({e.strerror})", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    def command(argv):
        ns = build_parser().parse_args(argv)
        config, cmd = COMMANDS[ns.command]
        return cmd(config(**{f.name: getattr(ns, f.name) for f in fields(config)}))
    return run_cli(command, argv, "label and train resume where they stopped when run again")


if __name__ == "__main__":
    sys.exit(main())
