"""Training: one loop for every objective (Math-Shepherd Eq. 1 and 2).

    python shepherd.py train --objective sft | prm | orm

sft fits the policy's responses (next-token loss); prm fits a label at every step tag (Eq. 2);
orm one label at the last tag (Eq. 1). The PRM's score is the +/- logits at the tag (model.py's
step_logits), so training and scoring read the same positions.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
from data.formats import InputError, StepExample, read_input, read_step_examples, text_field
from model import ModelConfig, PRMHead, Tokenizer, Transformer, step_logits, tag_positions
from shepherd import (COUNT, FRACTION, NONNEG, POSITIVE, RATE, Common, Dist, Signs, atomic_write,
                      auc, barrier, check_settings, file_digest, first_new_folder, flag,
                      init_distributed, load_model, load_trainer_state, prm_head, progress, seed_for)


@dataclass
class Example:
    ids: list[int]
    targets: list[float]  # sft: unused; prm/orm: one label per supervised tag
    loss_from: int = 0  # the first position whose NEXT token is a response token (prm/orm: for
    #                     --lm-coef, past the end if the solution is wrong)
    tag_mask: list[bool] | None = None  # prm/orm: which tag positions are supervised


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
    # --lm-coef's next-token loss: on the solution's tokens, if it reached the answer (as the
    # generator was trained); loss_from as in encode_sft, past the end for a wrong one
    p = tok.encode(data.to_model_tag(ex.text[:ex.prompt_len], head.text))
    loss_from = len(ids) if ex.outcome != 1 else len(p) - 1 if ids[:len(p)] == p else 0
    if len(tags) != len(ex.labels):
        raise InputError(f"{where or ex.id}: {len(ex.labels)} labels but {len(tags)} step tags "
                         f"after tokenization")
    if objective == "orm":  # Math-Shepherd Eq. 1: ORM, one BCE per solution, read at its last tag
        mask = [i == tags[-1] for i in range(len(ids))]
        return Example(ids, [ex.outcome], loss_from, mask)
    at = set(tags)
    mask = [i in at for i in range(len(ids))]  # Eq. 2: PRM, a BCE term for every step
    return Example(ids, list(ex.labels), loss_from, mask)


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
    lm_mask = torch.zeros(len(rows), S, dtype=torch.bool)  # prm/orm --lm-coef: solution, unsupervised
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
                lm_mask[b, at + e.loss_from:at + n - 1] = ~loss_mask[b, at + e.loss_from:at + n - 1]
                targets += e.targets
            at += n
    out = {"ids": ids.to(device), "mask": loss_mask.to(device), "lm_mask": lm_mask.to(device),
           "targets": torch.tensor(targets, dtype=torch.float32, device=device)}
    if pack_len:
        out["forward"] = {"positions": positions.to(device), "segments": segments.to(device)}
    return out


def objective_loss(model, batch: dict, objective: str, head: PRMHead | None, lm_coef: float = 0.0):
    """Mean loss over supervised positions, plus step probabilities and targets for evaluation.
    lm_coef > 0 (prm/orm) adds that times the next-token loss on the right solutions' tokens, except
    where the reward loss reads: the verifier keeps the generator's objective (Cobbe et al. 2021)."""
    ids, mask = batch["ids"], batch["mask"]
    kw = batch.get("forward", {})  # packed rows: positions and sequence ids
    if objective == "sft":  # next-token cross-entropy on the response tokens
        logits = model(ids, **kw)[:, :-1]
        m = mask[:, :-1]
        loss = F.cross_entropy(logits[m].float(), ids[:, 1:][m])
        return loss, None, None
    # PRM/ORM: r = p(+) = softmax([l+, l-])[0] = sigmoid(l+ - l-) at the tag, the SAME step_logits
    # used to score. Math-Shepherd Eq. 2: L_PRM = -sum_i [y_i log r_i + (1 - y_i) log(1 - r_i)]
    logits, hidden = step_logits(model, ids, head, with_hidden=True, **kw)
    read = logits[mask]  # the supervised tags
    margin = read[:, 0] - read[:, 1]
    loss = F.binary_cross_entropy_with_logits(margin, batch["targets"])
    if lm_coef:
        lm = batch["lm_mask"][:, :-1]  # may be empty: a batch of wrong solutions adds nothing
        w = getattr(model, "module", model).lm_head.weight  # as step_logits reads it
        nll = F.cross_entropy((hidden[:, :-1][lm] @ w.T).float(), ids[:, 1:][lm], reduction="sum")
        loss = loss + lm_coef * nll / lm.sum().clamp(min=1)
    return loss, margin.sigmoid().detach(), batch["targets"]


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
        if args.lm_coef:
            raise InputError(f"--lm-coef {args.lm_coef}: only for --objective prm or orm "
                             f"(sft is the next-token loss already)")
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
    lm_coef: float = flag(0.0, "prm/orm: add this x the next-token loss on the solutions that "
                          "reach the answer (Cobbe et al. 2021's joint objective; held-out loss "
                          "stays the BCE)",
                          type=NONNEG)
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
                  "heldout", "max_len", "lm_coef", "untie", "tag", "add_tag_token", "good", "bad", "seed")


def open_log(path: Path, keep_until: int | None, key: str):
    """A run's log.jsonl, locked against a second writer. On resume it is cut back to the
    checkpoint's record[key] (the resumed run writes what came after again); fresh, emptied.
    Only a log of records with `key` is cut, and only by a truncate (never rewritten: a kill
    loses nothing); a line torn by a kill mid-write is dropped, any other line is an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise InputError(f"{path}: another process is writing this run") from None
    lines = path.read_bytes().split(b"\n")[:-1]  # what follows the last newline is torn
    keep, cut = 0, keep_until is None  # bytes kept: the records up to keep_until, which come first
    for n, line in enumerate(lines, 1):
        try:
            at = json.loads(line)[key]
            cut = cut or at > keep_until
        except (ValueError, TypeError, KeyError):
            f.close()
            raise InputError(f"{path}:{n}: expected a log record (JSON with {key!r}): not this "
                             f"run's log, or a damaged one; move it away or fix the line") from None
        keep += 0 if cut else len(line) + 1
    f.truncate(keep)
    return f


def train_start(args, out: Path, resume: bool,
                scratch: Path) -> tuple[Transformer, Tokenizer, Path]:
    """The model to start from, its tokenizer and the tokenizer's folder: the checkpoint being
    resumed, a checkpoint (ours, or any Mistral/Llama on the hub), or a fresh tiny one. A
    tokenizer made here (scratch, or with an added tag) is saved in the folder `scratch`."""
    if resume:
        model, tok = load_model(out, "--out")
        tok_dir = out
    elif args.model == "scratch":
        task = data.get_task(args.task)
        if not hasattr(task, "build_tokenizer"):  # real tasks train a checkpoint's tokenizer
            raise InputError(f"--model is required for task {args.task!r}")
        tok_dir = scratch
        task.build_tokenizer(tok_dir)  # the same on every rank
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
        tok_dir = tok.save(scratch)
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
    # wrapping around the epoch's end, as often as it takes: a batch may be larger than n
    batch = [perm[(start + j) % n] for j in range(batch_size)]
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
        atomic_write(beside(out, ".eval.json"), json.dumps(res, indent=2) + "\n")

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
                loss, _, _ = objective_loss(self.ddp, batch, a.objective, self.head, a.lm_coef)
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


def beside(out: Path, suffix: str) -> Path:
    """A file train writes next to --out: OUT.log.jsonl, OUT.eval.json."""
    return out.parent / f"{out.name}{suffix}"


def train_state(out: Path, restart: bool, data_file: str | None) -> str:
    """What --out holds: 'fresh', 'resume' (a trainer_state.pt) or 'done' (trainer_state.json).
    Refused: a path under a file, a folder not ours, one whose files would replace --data."""
    above = next(p for p in out.parents if p.exists())
    if not above.is_dir():
        raise InputError(f"{out}: {above} is a file; expected a folder path")
    ours = (out / "trainer_state.pt").exists() or (out / "trainer_state.json").exists()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours)):
        raise InputError(f"{out}: --out exists and is not a train output (no trainer_state); "
                         f"choose another --out")
    src = data_file and Path(data_file).resolve()
    if src and (src in (beside(out, ".log.jsonl").resolve(), beside(out, ".eval.json").resolve())
                or out.resolve() in src.parents):
        raise InputError(f"--data {data_file}: train would overwrite it (the log, evaluation or "
                         f"checkpoint of --out {out}); choose another --out")
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
        raise InputError(f"--heldout {args.heldout}: leaves none of the {len(examples)} examples "
                         f"to train on")
    return train, held


def print_record(rec: dict, write=print):
    write(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()}))


def data_digest(path: str) -> str:
    """--data by its content; a file that cannot be read is the error line read_input gives."""
    try:
        return file_digest(path)
    except OSError:
        read_input(path)  # raises 'PATH: Permission denied; expected a JSONL file' and the like
        raise


def train_settings(args: TrainConfig) -> dict:
    """What a resume (or a finished run) must match: the settings and --data's content."""
    s = {**{k: getattr(args, k) for k in TRAIN_SETTINGS},
         "data_digest": args.data and data_digest(args.data)}
    if not args.lm_coef:  # absent when off: runs finished before the flag existed still match
        del s["lm_coef"]
    return s


def finished_settings(out: Path) -> dict | None:
    """The settings in a finished run's trainer_state.json (None: unreadable or not recorded)."""
    try:
        st = json.loads((out / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return st.get("settings") if isinstance(st, dict) else None


def make_trainer(args: TrainConfig, d: Dist, resume: bool, scratch: Path) -> Trainer:
    """Everything training needs, validated before the first byte is written: the model (resumed,
    loaded or fresh), its examples, the optimizer (its state when resuming)."""
    out = Path(args.out)
    if args.batch_size % (d.world * args.grad_accum):
        raise InputError(f"--batch-size {args.batch_size} must be a multiple of "
                         f"world size x --grad-accum")
    settings = train_settings(args)
    model, tok, tok_dir = train_start(args, out, resume, scratch)
    head = None
    if args.objective != "sft":
        try:
            head = prm_head(tok, args.tag, args.good, args.bad)
        except InputError as e:  # a scratch tokenizer's temp folder is no path the user gave
            raise InputError(str(e).removeprefix(f"{scratch / 'tokenizer.json'}: ")) from None
    model = model.to(d.device).float() if d.device == "cpu" else model.to(d.device)
    train, held = train_examples(args, tok, head, model.config.max_position_embeddings)
    opt = adamw(model, args.lr, args.weight_decay)
    start = 0
    if resume:
        st = load_trainer_state(out / "trainer_state.pt", ("settings", "optimizer", "step"))
        check_settings(out / "trainer_state.pt", st["settings"], settings)
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
    state = train_state(out, args.restart, args.data)
    if state == "done":  # finished for these settings only: others would be another run
        check_settings(out / "trainer_state.json", finished_settings(out), train_settings(args))
        print(f"{out}: training already finished (trainer_state.json); "
              f"pass --restart to train again")
        return 0
    made = first_new_folder(out)
    # a tokenizer this run makes (scratch, or with an added tag) lives here until saved with the
    # checkpoint; removed however the run ends
    scratch = Path(tempfile.mkdtemp(prefix="shepherd-tokenizer-"))
    log = bar = None
    try:
        T = make_trainer(args, d, state == "resume", scratch)
        if T.start and d.main:
            print(f"resuming {out} at step {T.start}")
        # the first byte written: everything above is validation
        log = open_log(beside(out, ".log.jsonl"), T.start or None, "step") if d.main else None
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
    except BaseException:  # a run that saved no checkpoint leaves nothing: no log, no new folder
        if bar is not None:
            bar.close()  # the error then starts a line of its own
        if log:
            log.close()
        if not (out / "trainer_state.pt").exists():
            if log:
                Path(log.name).unlink(missing_ok=True)
            if made:
                shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    barrier(d)
    if d.main:
        print(f"saved {out} ({T.model.num_params():,} parameters, {args.steps} steps, "
              f"{time.time() - t0:.0f}s)")
        if args.objective == "sft" and args.eval_problems:
            T.test_policy()
    return 0
