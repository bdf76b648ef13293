"""Index job at scale: a 1,000,000-document corpus through ``fastemb index`` on one machine, and its memory.

Measures whether the whole pipeline (corpus scan → Ray Data embedding → sharded IVF-PQ build → id map) runs on
this machine without running out of memory, and how much it uses: the manifest's own peak figures (``ru_maxrss`` of the
driver and of the workers) and, sampled every second while the job runs, the machine's used memory, the driver's RSS
and the RSS of every Ray process the job started (largest worker, and all workers summed), overall and per phase.

The corpus is real text: the 117,659 shipped WordNet definitions cycled to ``--n`` rows (copy k of definition X gets
id ``X#k``, copy 0 keeps ``X``), so texts repeat (about 8.5× at 1M) and each copy is embedded again; a seeded few
null, empty/whitespace and duplicate-id rows are injected, to show that they are counted at this scale. It is
written once per N as parquet shards in ``<out>/corpus-<N>/`` and reused by later runs. The job is
``jobs/index.yaml`` (IVF-PQ 48 B + refine flat) with evaluation off, run in this process on an embedded local Ray;
its run folder is started afresh every time (no embedding unit is reused). Figures go to bench/RESULTS.md.

    .venv/bin/python bench/index_scale.py [--n 1000000] [--out bench/out/scale] [--keep] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from fastemb.data.pairs import WORDNET_DIR  # noqa: E402
from fastemb.index.corpus import SKIP_DUPLICATE  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

log = logging.getLogger("fastemb.bench")
MB = 2 ** 20
SECTION = "index_build (c): 1,000,000-document corpus, memory"
BLANKS = ("", " ", "  \t\n ")  # the empty/whitespace texts injected, in turn


def copy_id(src_ids: list[str], row: int) -> str:
    """Id of corpus row ``row``: copy k of definition X is ``X#k`` (copy 0 keeps ``X``)."""
    k, j = divmod(row, len(src_ids))
    return src_ids[j] if k == 0 else f"{src_ids[j]}#{k}"


def build_corpus(n: int, folder: Path, shard_rows: int = 100_000, bad: int = 50, seed: int = 0) -> dict:
    """Write ``n`` cycled WordNet definitions as parquet shards in ``folder`` (reused if complete), with ``bad``
    null, ``bad`` empty/whitespace and ``bad`` duplicate-id rows at seeded positions; returns what was written."""
    done = folder / "_DONE.json"  # not a .parquet file: the corpus scan ignores it
    if done.exists():
        info = json.loads(done.read_text())
        if (info["n"], info["bad"], info["seed"], info["shard_rows"]) == (n, bad, seed, shard_rows):
            log.info(f"reusing corpus {folder}")
            return info
    src = pq.read_table(WORDNET_DIR / "all_definitions.parquet", columns=["id", "text"])
    src_ids, src_texts = src.column("id").to_pylist(), src.column("text").to_pylist()
    rng = np.random.default_rng(seed)
    # distinct rows: null text, blank text, duplicate id, and the row whose id each duplicate takes
    null_rows, blank_rows, dup_rows, targets = (p.tolist() for p in np.split(rng.choice(n, 4 * bad, replace=False), 4))
    null_rows, blank_rows, dup_of = set(null_rows), set(blank_rows), dict(zip(dup_rows, targets))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0, shards = time.time(), 0
    for shards, start in enumerate(range(0, n, shard_rows), 1):
        rows = range(start, min(n, start + shard_rows))
        ids = [copy_id(src_ids, dup_of[r]) if r in dup_of else copy_id(src_ids, r) for r in rows]
        texts = [None if r in null_rows else BLANKS[r % len(BLANKS)] if r in blank_rows
                 else src_texts[r % len(src_texts)] for r in rows]
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())}),
                       tmp / f"part-{shards - 1:05d}.parquet")
    info = {"n": n, "bad": bad, "seed": seed, "shards": shards, "shard_rows": shard_rows, "definitions": len(src_ids),
            "null": len(null_rows), "blank": len(blank_rows), "duplicate": len(dup_rows)}
    (tmp / "_DONE.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info(f"corpus: {n:,} rows in {shards} shard(s) written in {time.time() - t0:.1f}s")
    return info


class MemorySampler(threading.Thread):
    """Every ``every`` seconds: machine used memory (total − available), the driver's RSS, and the RSS of the Ray
    processes this driver started (workers: ``ray::…`` / ``default_worker.py`` other than Ray's agents; the rest:
    raylet, GCS, dashboard and its modules, agents, monitors). Keeps the peaks, overall and per phase (set by the
    caller), and writes every sample to ``csv_path``."""

    FIELDS = ("machine_used", "driver", "worker_max", "worker_sum", "ray_system", "all_ours")

    def __init__(self, csv_path: Path, every: float = 1.0):
        import psutil

        super().__init__(daemon=True)
        self.psutil, self.me, self.every = psutil, psutil.Process(), every
        self.csv = csv_path.open("w")
        self.csv.write("t_s,phase,machine_used_mb,driver_rss_mb,workers,worker_max_rss_mb,worker_sum_rss_mb,"
                       "ray_system_rss_mb\n")
        self.phase, self.t0, self.stop_event = "", time.time(), threading.Event()
        self.peaks: dict[str, dict] = {}  # phase (and "all") -> {field: MiB, "worker_max_name": ..., "workers": n}
        self.phase_times: dict[str, list[float]] = {}
        self.set_phase("Ray start + corpus scan")

    def set_phase(self, phase: str) -> None:
        now = time.time() - self.t0
        if self.phase in self.phase_times:
            self.phase_times[self.phase][1] = now
        self.phase = phase
        self.phase_times.setdefault(phase, [now, now])

    def sample(self) -> None:
        ps = self.psutil
        vm = ps.virtual_memory()
        driver = self.me.memory_info().rss
        workers, system = [], 0
        for p in self.me.children(recursive=True):
            try:
                cmd, rss = " ".join(p.cmdline()), p.memory_info().rss
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
            name = cmd.split()[0] if cmd.startswith("ray::") else "default_worker"
            if ("ray::" in cmd or "default_worker.py" in cmd) and not name.endswith("Agent"):
                workers.append((rss, name))
            else:
                system += rss
        top = max(workers, default=(0, "-"))
        wsum = sum(w[0] for w in workers)
        now = {"machine_used": (vm.total - vm.available) / MB, "driver": driver / MB, "worker_max": top[0] / MB,
               "worker_sum": wsum / MB, "ray_system": system / MB, "all_ours": (driver + wsum + system) / MB}
        for key in ("all", self.phase):
            pk = self.peaks.setdefault(key, {f: 0.0 for f in self.FIELDS} | {"worker_max_name": "-", "workers": 0})
            if now["worker_max"] > pk["worker_max"]:
                pk["worker_max_name"] = top[1]
            for f in self.FIELDS:
                pk[f] = max(pk[f], now[f])
            pk["workers"] = max(pk["workers"], len(workers))
        self.csv.write(f"{time.time() - self.t0:.1f},{self.phase},{now['machine_used']:.0f},{now['driver']:.0f},"
                       f"{len(workers)},{now['worker_max']:.0f},{now['worker_sum']:.0f},{now['ray_system']:.0f}\n")

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()
        self.set_phase("end")
        self.csv.close()


class PhaseHandler(logging.Handler):
    """Attached to the ``fastemb.index`` logger while the job runs: moves the sampler's phase on at the job's
    milestones (its log lines; fastemb's own handler still writes them)."""

    def __init__(self, sampler: MemorySampler) -> None:
        super().__init__(logging.INFO)
        self.sampler = sampler

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("corpus:"):
            self.sampler.set_phase("embed")
        elif msg.startswith("unit "):
            done, total = msg.split()[1].rstrip(":").split("/")
            if done == total:
                self.sampler.set_phase("build: duplicate plan + train + add")
        elif msg.startswith("trained in"):
            self.sampler.set_phase("build: merge + id map + manifest")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB if path.exists() else 0.0


def run(n: int, out: Path, keep: bool, overrides: list[str], bad: int, shard_rows: int) -> None:
    import psutil
    import ray

    from fastemb.index.job import run_index

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = out / f"corpus-{n}"
    corpus = build_corpus(n, corpus_dir, shard_rows, bad)
    spec = load_spec(ROOT / "jobs" / "index.yaml", ["name=scale", f"storage_path={out}", f"corpus.path={corpus_dir}",
                                                     "evaluate.enabled=false", *overrides], "index")
    run_dir = spec.run_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no embedding unit reused
    total = psutil.virtual_memory().total / MB
    base = total - psutil.virtual_memory().available / MB
    sampler = MemorySampler(out / f"memory-{n}.csv")
    sampler.start()
    phases = PhaseHandler(sampler)
    index_logger = logging.getLogger("fastemb.index")
    index_logger.addHandler(phases)
    t0 = time.time()
    try:
        manifest = run_index(spec)
    finally:
        job_wall = time.time() - t0
        index_logger.removeHandler(phases)
        sampler.stop()
        ray.shutdown()
    shutil.copy(run_dir / "manifest.json", out / f"manifest-{n}.json")
    sizes = {f.name: f.stat().st_size / MB for f in run_dir.iterdir() if f.is_file() and f.name != "manifest.json"}
    emb_mb = dir_mb(Path(manifest["embedding"]["shard_dirs"][0]).parent)
    if not keep:
        shutil.rmtree(run_dir)
        for d in {Path(s).parent for s in manifest["embedding"]["shard_dirs"]}:  # an explicit embed.output
            shutil.rmtree(d, ignore_errors=True)
    body = report(manifest, corpus, sampler, spec, overrides, total, base, job_wall, sizes, emb_mb, keep, out, n)
    body += f"\nWhole script {time.time() - t_start:.0f}s (corpus build/reuse included).\n"
    print(body)
    write_section(SECTION, body)


def report(m: dict, corpus: dict, s: MemorySampler, spec, overrides: list[str], total: float, base: float,
           job_wall: float, sizes: dict, emb_mb: float, keep: bool, out: Path, n: int) -> str:
    """The RESULTS.md section body."""
    c, e, b, mem = m["counts"], m["embedding"], m["build"], m["memory"]
    skipped = c["skipped"]
    expected = {"null": corpus["null"], "empty": corpus["blank"], SKIP_DUPLICATE: corpus["duplicate"]}
    as_injected = all(skipped.get(k, 0) == v for k, v in expected.items()) and sum(skipped.values()) == sum(
        expected.values())
    kept_ok = c["documents_indexed"] == corpus["n"] - sum(expected.values())
    skip_rows = "\n".join(f"| skipped: {k} | {v:,} | {expected.get(k, 0):,} |" for k, v in sorted(skipped.items()))
    pk = s.peaks["all"]
    phases = [p for p in s.phase_times if p in s.peaks and p not in ("all", "end")]
    phase_rows = "\n".join(
        f"| {p} | {s.phase_times[p][1] - s.phase_times[p][0]:.0f} | {s.peaks[p]['machine_used']:,.0f} | "
        f"{s.peaks[p]['driver']:,.0f} | {s.peaks[p]['worker_max']:,.0f} ({s.peaks[p]['worker_max_name']}) | "
        f"{s.peaks[p]['worker_sum']:,.0f} ({s.peaks[p]['workers']}) | {s.peaks[p]['all_ours']:,.0f} |"
        for p in phases)
    build_stage = sum(s.phase_times[p][1] - s.phase_times[p][0] for p in phases if p.startswith("build"))
    ic, ec = spec.index, spec.embed
    refine = b.get("refine", {}).get("mode", ic.refine)
    index_mb = sizes.get("index.faiss", 0.0)
    on_disk = sum(sizes.values())
    fits = pk["all_ours"] <= total and pk["machine_used"] < total
    gib = total / 1024
    return f"""Corpus: {corpus['n']:,} documents in {corpus['shards']} parquet shards of ≤ {corpus['shard_rows']:,} rows,
built from the {corpus['definitions']:,} shipped WordNet definitions cycled (copy k of definition X has id `X#k`, copy
0 keeps `X`): **each text appears {corpus['n'] / corpus['definitions']:.1f}× on average (at most
{-(-corpus['n'] // corpus['definitions'])}×), and every copy is embedded again** (fastemb has no text cache). Injected at seeded positions (seed {corpus['seed']}): {corpus['null']} null texts,
{corpus['blank']} empty/whitespace texts, {corpus['duplicate']} rows reusing another row's id.
Job: `jobs/index.yaml` with evaluation off{(', overrides ' + ' '.join(f'`{o}`' for o in overrides)) if overrides else ''}
— model {spec.model.base} (max_length {spec.model.max_length}), {ec.num_actors} encoder actors × {ec.threads_per_actor}
thread, `embed.rows_per_unit` {ec.rows_per_unit:,} ({e['units']} units: a unit never splits a corpus file); factory `{b['factory']}` (refine {refine}), trained on
{b['train_vectors']:,} vectors, {b['add_tasks']} add tasks; in this process on an embedded local Ray, fresh run folder.

| counts (manifest) | figure | injected |
|---|---|---|
| rows read | {c['rows_read']:,} | |
| documents indexed | {c['documents_indexed']:,} | {corpus['n'] - sum(expected.values()):,} expected: {'ok' if kept_ok else '**differs**'} |
{skip_rows}

Skip counts as injected: {'yes' if as_injected else '**no**'}.

| stage | wall (s) | docs/s |
|---|---|---|
| embedding (Ray Data, {e['units']} units, {e['units_reused']} reused) | {e['embed_s']:.1f} | {c['rows_read'] / e['embed_s']:.0f} |
| faiss build (train {b['train_s']:.1f}s, add {b['add_s']:.1f}s, merge {b['merge_s']:.1f}s) | {b['build_s']:.1f} | {c['index_entries'] / b['build_s']:.0f} |
| build stage (duplicate plan, faiss build, id map, manifest) | {build_stage:.1f} | {c['index_entries'] / max(build_stage, 1e-9):.0f} |
| whole job (`run_index`: Ray start, scan, embedding, build) | {job_wall:.1f} | {c['rows_read'] / job_wall:.0f} |

| memory | MiB |
|---|---|
| manifest `memory.driver_peak_rss_mb` (driver `ru_maxrss`) | {mem['driver_peak_rss_mb']:,.0f} |
| manifest `memory.worker_peak_rss_mb` (largest `ru_maxrss` reported by an encoder actor or build task) | {mem['worker_peak_rss_mb']:,.0f} |
| sampled: driver RSS, peak | {pk['driver']:,.0f} |
| sampled: largest Ray worker RSS, peak ({pk['worker_max_name']}) | {pk['worker_max']:,.0f} |
| sampled: Ray workers' RSS summed, peak (up to {pk['workers']} workers) | {pk['worker_sum']:,.0f} |
| sampled: Ray system processes (raylet, GCS, dashboard and its modules, agents, monitors) summed, peak | {pk['ray_system']:,.0f} |
| sampled: driver + every Ray process, summed at one sample, peak | {pk['all_ours']:,.0f} |
| machine used memory (total − available): before the job {base:,.0f}, peak | {pk['machine_used']:,.0f} of {total:,.0f} |

Per phase (sampled every {s.every:g}s; MiB; workers in brackets: the largest one's name, and how many at most):

| phase | s | machine used | driver RSS | largest worker RSS | workers summed | driver + Ray summed |
|---|---|---|---|---|---|---|
{phase_rows}

Summed RSS counts pages shared between processes (the Ray object store, libraries) once per process: it
overstates the job's footprint. Machine used memory includes everything else running on the machine. Samples are 1 s
apart, so a shorter spike shows only in the manifest's `ru_maxrss` figures. Samples: `{out / f'memory-{n}.csv'}`.

On disk: index.faiss {index_mb:,.0f} MiB ({b['file_bytes_per_vector']} B/vector; {b['code_bytes_per_vector']} B/vector
in memory), ids.parquet {sizes.get('ids.parquet', 0):,.0f} MiB, index folder {on_disk:,.0f} MiB in all; embedding
shards {emb_mb:,.0f} MiB ({'kept' if keep else 'deleted after the run; manifest kept as ' + f'`{out / f"manifest-{n}.json"}`'}).

**Fits in 24 GiB: {'yes' if fits else 'no'}** (computed: the job finished; driver + every Ray process summed peaked at
{pk['all_ours'] / 1024:.1f} GiB and the machine's used memory at {pk['machine_used'] / 1024:.1f} GiB, of {gib:.1f} GiB
RAM, no swap).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="documents in the corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale",
                    help="corpus, run folder, manifest copy and memory samples")
    ap.add_argument("--keep", action="store_true", help="keep the embedding shards and the index")
    ap.add_argument("--bad", type=int, default=50, help="null, empty and duplicate-id rows injected (each)")
    ap.add_argument("--shard-rows", type=int, default=100_000, help="rows per corpus parquet shard")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides of jobs/index.yaml")
    a = ap.parse_args()
    configure_logging()
    run(a.n, a.out.resolve(), a.keep, a.overrides, a.bad, a.shard_rows)


if __name__ == "__main__":
    main()
