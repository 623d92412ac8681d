"""Tokenizer.encode == transformers' AutoTokenizer(text).input_ids: on every real tokenizer in ../shared/data and on
small ones built here (BOS by the post-processor or not at all, tokenizer_config's add_bos_token / add_eos_token,
which transformers 5.x ignores beside a tokenizer.json, byte-level BPE and sentencepiece-style)."""
import json
from pathlib import Path

import pytest

from model import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = sorted(p.parent for p in SHARED.glob("*/tokenizer.json"))
TEXTS = ["Q? Step 1: 2+2=4 ки\nStep 2: The answer is: 4 ки", " leading space", "", "tab\tand\n\nnewlines  ",
         "Ünïcödé — ∑ 3×4 = 12 ки", "<s> a literal BOS in the text </s>"]


def auto_ids(folder, text):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids


@pytest.mark.skipif(not REAL, reason="no tokenizer.json under ../shared/data")
@pytest.mark.parametrize("folder", REAL, ids=[p.name for p in REAL])
def test_real_tokenizers_encode_as_auto_tokenizer(folder):
    tok = Tokenizer(folder)
    for text in TEXTS:
        assert tok.encode(text) == auto_ids(folder, text), text


@pytest.mark.skipif(not (SHARED / "smollm2-135m-instruct").exists(), reason="SmolLM2's tokenizer is absent")
def test_smollm2_gets_no_bos():
    tok = Tokenizer(SHARED / "smollm2-135m-instruct")  # its post-processor adds nothing; its bos_token is <|im_start|>
    assert tok.encode("1 ки") == [33, 31338, 7872] and not tok.add_bos and tok.bos_id == 1


def build(folder: Path, kind: str, template: str | None, config: dict) -> Path:
    """A small trained tokenizer: byte-level BPE (GPT-2 / Llama-3 style) or sentencepiece-style (Metaspace '▁'),
    with the post-processor template `template` ('<s> $A', '$A', or None for none) and tokenizer_config `config`."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers
    special = ["<unk>", "<s>", "</s>"]
    corpus = ["The answer is: 4 ки", "2+2=4 and 3×4 = 12", "Step 1: leading space, tabs and newlines"] * 20
    if kind == "byte-level":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special)
    tok.train_from_iterator(corpus, trainer)
    if template is not None:
        tok.post_processor = processors.TemplateProcessing(single=template, pair=template + " $B",
                                                           special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    conf = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast",
            **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    return folder


# name: (kind, post-processor template, tokenizer_config extras, does the text get a BOS, an EOS). transformers 5.x
# drops add_bos_token / add_eos_token when there is a tokenizer.json: the post-processor alone decides.
BUILT = {
    "bpe-bos-by-post-processor": ("byte-level", "<s> $A", {}, True, False),
    "bpe-post-processor-adds-nothing": ("byte-level", "$A", {}, False, False),
    "bpe-no-post-processor": ("byte-level", None, {}, False, False),
    "bpe-bos-and-eos-by-post-processor": ("byte-level", "<s> $A </s>", {}, True, True),
    "bpe-add_bos_token-false-does-not-override": ("byte-level", "<s> $A", {"add_bos_token": False}, True, False),
    "bpe-add_bos_token-true-does-not-override": ("byte-level", "$A", {"add_bos_token": True}, False, False),
    "sp-bos-by-post-processor": ("sentencepiece", "<s> $A", {}, True, False),
    "sp-no-post-processor": ("sentencepiece", None, {}, False, False),
    "sp-add_bos_token-false-does-not-override": ("sentencepiece", "<s> $A", {"add_bos_token": False}, True, False),
    "sp-flags-without-post-processor": ("sentencepiece", None, {"add_bos_token": True, "add_eos_token": True},
                                        False, False),
}


@pytest.mark.parametrize("name", list(BUILT))
def test_built_tokenizers_encode_as_auto_tokenizer(name, tmp_path):
    kind, template, config, bos, eos = BUILT[name]
    folder = build(tmp_path / name, kind, template, config)
    tok = Tokenizer(folder)
    core = tok.tok.encode("The answer is: 4", add_special_tokens=False).ids
    want = [tok.bos_id] * bos + core + [tok.eos_id] * eos
    assert tok.encode("The answer is: 4") == want == auto_ids(folder, "The answer is: 4")
    assert tok.encode("The answer is: 4", bos=False, eos=False) == core
    for text in TEXTS:
        assert tok.encode(text) == auto_ids(folder, text), text
