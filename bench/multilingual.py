"""Multilingual knowledge distillation (issue 18): fastemb's jobs/multilingual.yaml against sentence-transformers' own
recipe (``MSELoss`` with a teacher, as in its ``make_multilingual`` example), on the same pairs, teacher and budget.

1. Parallel text from this machine's installed translations (``fastemb.data.build_parallel``: gettext UI strings and
   iso-codes names; train and test are different string families), built once into ``--out/parallel``.
2. fastemb: ``fastemb train jobs/multilingual.yaml`` (Ray Train + DeepSpeed, ``--workers`` workers × ``--batch``
   pairs; the teacher all-MiniLM-L6-v2 embeds the English texts once with Ray Data; MSE of the student's English and
   translation vectors onto them), ``--pairs`` pairs drawn per language with temperature ``--temperature``.
3. The peer: the same rows (read back from fastemb's stored teacher outputs, so the sample is identical), the teacher's
   labels computed once with ``SentenceTransformer.encode``, then ``SentenceTransformerTrainer`` with
   ``losses.MSELoss`` on (english, non_english) columns, the same student, ``--workers`` processes (DDP over gloo)
   × the same per-device batch, learning rate, warm-up, schedule, epochs.
4. Both models and the base scored the same way: translation retrieval per language on the held-out families
   (xx→en and en→xx accuracy@1 and nDCG@10, at most ``--test-pairs`` pairs per language), and English kept: WordNet
   test nDCG@10 (2,000 queries against 20,000 definitions) against the teacher's (the base model is the teacher).
   Throughput: training pairs per second of each (fastemb: its progress line, from the loop's start; the peer:
   the trainer's ``train_samples_per_second``), and the whole recipe's time (teacher labels + training).

    .venv/bin/python bench/multilingual.py [--pairs 16000] [--languages de,fr,es,it,pt,nl,ru,el] [--lr 1e-4]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("fastemb.bench")
LATIN = ("de", "fr", "es", "it", "pt", "nl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_data(out: Path, languages: list[str]) -> Path:
    """The parallel set in ``out/parallel`` (built unless it is there for these languages)."""
    from fastemb.data.build_parallel import build

    folder = out / "parallel"
    report = folder / "report.json"
    if report.exists() and set(json.loads(report.read_text())["languages"]) == set(languages):
        return folder
    log.info(f"building parallel text for {languages} into {folder}")
    build(folder, languages=languages)
    return folder


def run_fastemb(args, data: Path, out: Path) -> dict:
    """jobs/multilingual.yaml with the bench's budget; its report."""
    from fastemb.spec import load_spec
    from fastemb.train.job import run_train

    name = "bench-multilingual"
    if args.reuse and (out / name / "report.json").exists():
        log.info(f"reusing {out / name / 'report.json'} (--reuse)")
        return json.loads((out / name / "report.json").read_text())
    if (out / name).exists():
        shutil.rmtree(out / name)  # a fresh run: its timings are the figures
    spec = load_spec(ROOT / "jobs" / "multilingual.yaml", [
        f"name={name}", f"storage_path={out}", f"data.train={data / 'train.parquet'}", f"data.max_pairs={args.pairs}",
        f"multilingual.languages={json.dumps(args.languages)}", f"multilingual.temperature={args.temperature}",
        f"multilingual.test={data / 'test.parquet'}", f"multilingual.test_pairs={args.test_pairs}",
        f"train.micro_batch_size={args.batch}", f"train.num_workers={args.workers}", f"train.lr={args.lr}",
        f"train.warmup_ratio={args.warmup}", "train.epochs=1", "train.checkpoint_every=100000",
        "train.eval_every=100000", "train.log_every=10", f"train.seed={args.seed}", "general=null"], "train")
    t0 = time.time()
    report = run_train(spec)
    report["wall_s"] = time.time() - t0
    return report


def run_peer(args, fastemb_dir: Path, out: Path) -> dict:
    """sentence-transformers' multilingual recipe on fastemb's sampled rows; its result and model folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from fastemb.model.encoder import default_model_path

    peer = out / "st-peer"
    if peer.exists():
        shutil.rmtree(peer)
    peer.mkdir(parents=True)
    rows = pq.read_table(fastemb_dir / "teacher" / "pairs.parquet", columns=["query", "positive"]).to_pylist()
    if args.peer_steps:  # throughput only: the rows those steps read
        rows = rows[:args.peer_steps * args.batch * args.workers]
    t0 = time.time()
    teacher = SentenceTransformer(default_model_path(), device="cpu")
    teacher.max_seq_length = 64
    english = [r["positive"] for r in rows]
    unique = list(dict.fromkeys(english))
    vectors = teacher.encode(unique, batch_size=256, convert_to_numpy=True)  # the example's dataset.map(...), deduped
    at = {t: i for i, t in enumerate(unique)}
    labels = vectors[[at[t] for t in english]].astype(np.float32)
    teacher_s = time.time() - t0
    pq.write_table(pa.table({"english": english, "non_english": [r["query"] for r in rows],
                             "label": pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1)),
                                                                        labels.shape[1])}), peer / "train.parquet")
    (peer / "config.json").write_text(json.dumps({"batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                                                  "seed": args.seed, "max_steps": args.peer_steps or -1}))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.workers}", "--nnodes=1",
           f"--master_port={_free_port()}", __file__, "--st-worker", str(peer)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    t1 = time.time()
    with open(peer / "train.log", "w") as logf:
        rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"sentence-transformers training failed (exit {rc}); see {peer / 'train.log'}")
    result = json.loads((peer / "result.json").read_text())
    return {**result, "teacher_s": teacher_s, "launch_and_train_s": time.time() - t1, "pairs": len(rows)}


def _st_worker(peer: Path) -> None:
    """One training process of the peer (launched by torch.distributed.run): make_multilingual's MSELoss."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers import losses

    import pyarrow.parquet as pq

    from fastemb.model.encoder import default_model_path

    cfg = json.loads((peer / "config.json").read_text())
    torch.set_num_threads(1)
    student = SentenceTransformer(default_model_path(), device="cpu")
    student.max_seq_length = 64
    data = Dataset.from_list(pq.read_table(peer / "train.parquet").to_pylist())
    args = SentenceTransformerTrainingArguments(
        output_dir=str(peer / "trainer"), per_device_train_batch_size=cfg["batch"], learning_rate=cfg["lr"],
        num_train_epochs=1, warmup_ratio=cfg["warmup"], lr_scheduler_type="linear", weight_decay=0.01,
        max_grad_norm=1.0, save_strategy="no", report_to="none", logging_steps=10, use_cpu=True, ddp_backend="gloo",
        seed=cfg["seed"], dataloader_drop_last=True, max_steps=cfg.get("max_steps", -1))
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=data,
                                         loss=losses.MSELoss(model=student))
    t0 = time.time()
    metrics = trainer.train().metrics
    train_s = time.time() - t0
    if int(os.environ.get("RANK", "0")) == 0:
        student.save(str(peer / "model"))
        (peer / "result.json").write_text(json.dumps({
            "model_dir": str(peer / "model"), "train_s": train_s, "loss": metrics.get("train_loss"),
            "pairs_per_s": metrics.get("train_samples_per_second"), "steps": trainer.state.global_step}))


def score_peer(report: dict, peer: dict, args) -> dict:
    """The peer's translation retrieval (same pairs as fastemb's report) and WordNet test nDCG@10."""
    from fastemb.eval.retrieval import evaluate_model
    from fastemb.eval.translation import evaluate_languages, held_out_pairs, read_parallel
    from fastemb.model.encoder import Encoder
    from fastemb.spec import StudentModelSpec, TrainJob

    spec = TrainJob.model_validate(report["spec"])
    m = spec.multilingual
    pairs, _ = held_out_pairs(read_parallel(m.test, m.languages), m.languages, m.test_pairs, spec.train.seed)
    model = StudentModelSpec.model_validate({**spec.model.model_dump(), "max_length": report["eval_max_seq_length"]})
    encoder = Encoder.from_spec(model, peer["model_dir"])
    return {"translation": evaluate_languages(encoder.encode, pairs, m.min_test_pairs),
            "wordnet": evaluate_model(model, spec.data, path=peer["model_dir"])}


def _acc(res: dict, lang: str, direction: str = "xx→en", metric: str = "accuracy@1") -> float | None:
    r = res.get(lang, {})
    return r[direction][metric] if direction in r else None


def body(args, report: dict, peer: dict, peer_scores: dict) -> str:
    from fastemb.eval.translation import error_cut

    ml = report["multilingual"]
    base, ours, theirs = ml["base"], ml["tuned"], peer_scores["translation"]
    tokens = ml["tokenizer"]
    lines = ["| language | script | test pairs | tokens/char | [UNK] share | base xx→en acc@1 | fastemb | error cut | "
             "ST MSELoss | error cut | base xx→en nDCG@10 | fastemb | ST | base en→xx acc@1 | fastemb | ST |",
             "|" + "---|" * 16]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    def cut(b, t):
        c = None if b is None or t is None else error_cut(b, t)
        return "–" if c is None else f"{c:.0%}"

    met = []
    for lang in args.languages:
        b, o, t = (_acc(x, lang) for x in (base, ours, theirs))
        if lang in LATIN and b is not None and o is not None:
            met.append((lang, error_cut(b, o)))
        lines.append("| " + " | ".join([
            lang, "Latin" if lang in LATIN else "other", str(base.get(lang, {}).get("pairs", 0)),
            f(tokens.get(lang, {}).get("tokens_per_char")), f(tokens.get(lang, {}).get("unk_share")), f(b), f(o),
            cut(b, o), f(t), cut(b, t), *(f(_acc(x, lang, metric="ndcg@10")) for x in (base, ours, theirs)),
            *(f(_acc(x, lang, "en→xx")) for x in (base, ours, theirs))]) + " |")
    wn_base, wn_ours = report["base"]["ndcg@10"], report["tuned"]["ndcg@10"]
    wn_st = peer_scores["wordnet"]["ndcg@10"] if peer_scores["wordnet"] else None
    ours_rate = [h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1]
    theirs_rate = peer["pairs_per_s"]
    mean = {who: sum(_acc(res, lang) or 0 for lang in args.languages) / len(args.languages) if res else None
            for who, res in (("fastemb", ours), ("st", theirs), ("base", base))}
    latin_ok = all(c is not None and c >= 0.5 for _, c in met)
    plan, pairs = report["plan"], report["pairs"]
    teacher = report["teacher_outputs"]
    return "\n".join([
        f"Data: {pairs['kept']} training pairs drawn from the installed gettext and iso-codes translations "
        f"(`fastemb.data.build_parallel`; temperature {args.temperature}: "
        + ", ".join(f"{lang} {v['drawn']}" for lang, v in pairs["by_language"].items())
        + f"); held-out string families, at most {args.test_pairs} test pairs per language. Teacher and student: "
        f"all-MiniLM-L6-v2 (English WordPiece vocabulary). Both trainers: {args.workers} workers/processes × "
        f"{args.batch} pairs, {plan['total_steps']} steps (1 epoch), lr {args.lr:g}, {args.warmup:.0%} warm-up, "
        f"linear decay, max 64 tokens, one seed ({args.seed}) each — no spread measured, so small differences "
        "between fastemb and the peer are not a verdict.", "",
        "Translation retrieval among all test pairs of a language (accuracy@1, nDCG@10; error cut = share of the "
        "base's errors removed):", "", *lines, "",
        f"Mean xx→en accuracy@1 over the {len(args.languages)} languages: base {mean['base']:.3f}, fastemb "
        f"{mean['fastemb']:.3f}, sentence-transformers {f(mean['st'])}.", "",
        "Target (each Latin-script language: the distilled student cuts the base's xx→en error by at least half): "
        + ("**met**" if latin_ok else "**NOT met**") + " — "
        + ", ".join(f"{lang} {c:.0%}" for lang, c in met) + ".", "",
        f"English kept (WordNet test nDCG@10, 2,000 queries × 20,000 definitions): teacher (= base) {wn_base:.4f}, "
        f"fastemb {wn_ours:.4f} ({wn_ours / wn_base:.1%} of the teacher), sentence-transformers "
        + (f"{wn_st:.4f} ({wn_st / wn_base:.1%})" if wn_st else "not measured") + ". Target ≥ 97 %: " + ("**met**" if wn_ours >= 0.97 * wn_base else "**NOT met**")
        + ".", "",
        f"Throughput (training pairs per second; each pair is two texts through the student): fastemb "
        f"{ours_rate:.1f}, sentence-transformers {theirs_rate:.1f} → **{ours_rate / theirs_rate:.2f}×** (target "
        f"≥ 1.0× at equal or better accuracy: " + (
            "accuracy not compared: the peer ran only " f"{peer['steps']} steps (--peer-steps), for its throughput"
            if mean["st"] is None else "met" if ours_rate >= theirs_rate and mean["fastemb"] >= mean["st"]
            else "NOT met") + "). "
        f"Whole recipe: fastemb teacher vectors {teacher['embed_s']:.0f} s (Ray Data, {teacher['texts']} English "
        f"texts) + training {report['train_seconds']:.0f} s (Ray Train start, loop, export); peer teacher labels "
        f"{peer['teacher_s']:.0f} s ({peer['pairs']} rows) + {peer['launch_and_train_s']:.0f} s (process launch, loop "
        f"{peer['train_s']:.0f} s for {peer['steps']} steps, save).", "",
        f"Per-language table and PNG of the fastemb run: `{Path(report['multilingual']['png']).name}` and "
        "`languages.md` in its run folder (bench/out/multilingual/bench-multilingual/).",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--languages", default="de,fr,es,it,pt,nl,ru,el")
    ap.add_argument("--pairs", type=int, default=16000)
    ap.add_argument("--test-pairs", type=int, default=1000)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "multilingual")
    ap.add_argument("--peer-steps", type=int, default=0, help="train the peer only this many steps: its throughput "
                    "without its accuracy (for a machine too busy to run both budgets)")
    ap.add_argument("--reuse", action="store_true", help="reuse the fastemb run of --out (re-run the peer only)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--st-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.st_worker:
        _st_worker(args.st_worker)
        return
    from bench.results import write_section
    from fastemb.logs import configure as configure_logging

    configure_logging()
    args.languages = [x for x in args.languages.split(",") if x]
    args.out.mkdir(parents=True, exist_ok=True)
    data = build_data(args.out, args.languages)
    report = run_fastemb(args, data, args.out)
    peer = run_peer(args, Path(report["model_dir"]).parent, args.out)
    # a peer cut to --peer-steps measures throughput only: its model has not seen the budget, so it is not scored
    peer_scores = score_peer(report, peer, args) if not args.peer_steps else {"translation": {}, "wordnet": None}
    (args.out / "peer_scores.json").write_text(json.dumps({"peer": peer, "scores": peer_scores}, indent=2))
    text = body(args, report, peer, peer_scores)
    if args.no_write:
        print(text)
    else:
        write_section("Multilingual distillation (issue 18)", text)
        print(text)


if __name__ == "__main__":
    main()
