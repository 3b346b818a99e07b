"""``make eval``: every shipped model on its held-out synthetic test split, with the three baselines.

For each ``<models>/<category>.onnx`` (sorted): the test split of that category is generated once under
``<data>/<category>`` (:data:`TEST_SPLIT`: shape parameters and textures of the ``test`` bands, never seen
in training; tabletop clutter and occlusion; 640x480) unless a matching one is there (``split.json``
records the generation arguments), then :func:`cse_train.evaluate.run_evaluation` runs the node's code path
(core crop -> ONNX through ``cse_pose.inference.load_model`` -> core selection -> RANSAC-Umeyama -> pose,
default :class:`~cse_pose.pipeline.PipelineParams`) and the baselines (a) ``pose_head`` (the ONNX file's
pose-regressor outputs), (b) ``umeyama_all`` and (c) ``gt_correspondences``. Scoring follows the field's
protocol (NOCS): bottle, bowl, can and the mug frames whose handle is hidden are y-symmetric (the count is
printed). Per category the plain table is printed and ``<out>/<category>.json`` written; at the end
``<out>/summary.md`` holds one markdown table per category (the model cards' accuracy tables: every pose, and
for the node the published poses only, untrusted = failure, with the share of frames published), the mug's
errors by handle visibility and side, and the target check of the models issue.

Second split (``splits`` containing ``"lit"``; ``make eval`` evaluates both): :data:`TEST_SPLIT_LIT`, the same
scenes (same generation arguments, hence the same shapes, cameras, clutter, masks, depth and ground truth)
rendered by a different renderer than training's (pybullet's TinyRenderer by default, with its own lighting,
specular highlights and shadow map; open3d's lit offscreen renderer with ``renderer="open3d"``), in texture
families training never uses (:mod:`cse_train.data.lit`); generated once under
``<lit_data_root>/<category>``; its tables are printed and written (``<out>/lit/<category>.json``, a
``lit split`` section of ``summary.md``) under the split's name. It measures how much of the accuracy
survives a change of renderer. Where the renderer cannot run, the split is skipped with the reason.

Third split (``"wide"``): :data:`TEST_SPLIT_WIDE`, test scenes whose target has at least one shape parameter
outside the band ranges the first models were trained on, inside the real-world ranges
(``cse_train.shapes.SHAPE_PARAM_WIDE``; ``synthetic.generate(shapes="outside")``), training's renderer; under
``<wide_data_root>/<category>``, tables in ``<out>/wide/``. It measures sizes and shapes beyond the band (the
median size error column). It is not one of the acceptance splits, so it has no target line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cse_pose.core.categories import SYMMETRY
from cse_pose.core.metrics import METRIC_NAMES
from cse_pose.inference import find_models, int8_path

from .evaluate import (
    HANDLE_GROUPS,
    PUBLISHED_SUFFIX,
    EvalReport,
    format_handle_table,
    format_table,
    handle_line,
    run_evaluation,
    table_rows,
)

__all__ = ["BASELINE_LABELS", "EVAL_SPLITS", "TEST_SPLIT", "TEST_SPLIT_LIT", "TEST_SPLIT_WIDE", "ensure_lit_split",
           "ensure_test_split", "evaluate_shipped", "markdown_handle_table", "markdown_table"]

#: Generation arguments of the evaluation split (``cse_train.data.synthetic.generate``), per category.
#: ``gt``: version of the recorded ground truth (2: a mug's ``handle_visible``); a split made with other
#: arguments, or before the field existed, is regenerated.
TEST_SPLIT: dict[str, Any] = {"split": "test", "videos": 20, "frames": [12, 12], "width": 640, "height": 480,
                              "seed": 7, "gt": 2}
#: Generation arguments of the lit split (``cse_train.data.lit.generate_lit``): the synthetic split's scenes
#: (same seed) through ``renderer`` (a key of ``lit.LIT_RENDERERS``) with the ``lit.LIT_FAMILIES`` textures;
#: ``frame_timeout_s``: the stall watchdog's limit per frame (a frame stalling twice is skipped).
TEST_SPLIT_LIT: dict[str, Any] = dict(TEST_SPLIT, renderer="tiny", frame_timeout_s=60.0)
#: Generation arguments of the wide split: test-split scenes (same seed) whose target shapes lie partly outside
#: the band ranges (``shapes="outside"``), half as many videos.
TEST_SPLIT_WIDE: dict[str, Any] = dict(TEST_SPLIT, videos=10, shapes="outside")
#: Split name -> what it is (printed with its tables).
EVAL_SPLITS: dict[str, str] = {
    "synthetic": "held-out synthetic test split (training's renderer, unseen shapes and textures)",
    "lit": "lit split (same scenes, another renderer with its own lighting and shadows, texture families never used "
           "in training)",
    "wide": "wide split (training's renderer; target shapes partly outside the band ranges the first models were "
            "trained on, inside the real-world ranges)",
}
#: Evaluation modes in table order, with the label the cards use.
BASELINE_LABELS: dict[str, str] = {
    "pipeline": "ours (the node's pipeline)",
    "pose_head": "(a) pose regressor head alone",
    "umeyama_all": "(b) plain Umeyama on all correspondences (reference behaviour)",
    "gt_correspondences": "(c) ground-truth correspondences, same solver (upper bound)",
}
#: Acceptance targets of the accuracy issue, per category and split (fractions of frames): IoU50, 10°5cm and
#: 5°2cm of every pose, the share published, the share of the published poses within 10°5cm ("precision"), and
#: at most ``flips`` of the frames with a rotation error over 90° (categories without a symmetry axis,
#: ``cse_pose.core.categories.SYMMETRY``); besides, our pipeline at least as good as baseline (b) on 10°5cm.
TARGETS: dict[str, float] = {"IoU50": 0.80, "10deg5cm": 0.70, "5deg2cm": 0.40, "published": 0.80, "precision": 0.90,
                             "flips": 0.02}


def int8_line(reports: Sequence[EvalReport], int8: EvalReport, name: str) -> str:
    """One line comparing the INT8 file's pipeline row with the float file's (10°5cm over every frame and of the
    published poses, published share) and the rule for running it by default on the CPU."""
    from .quantize import MAX_DROP_POINTS

    ours = next(r for r in reports if r.mode == "pipeline")
    drop = 100 * (ours.summary["10deg5cm"] - int8.summary["10deg5cm"])
    return (f"INT8 `{name}` (what the node runs on the CPU): 10°5cm {100 * int8.summary['10deg5cm']:.1f} % "
            f"(float {100 * ours.summary['10deg5cm']:.1f}, drop {drop:.1f} points; rule <= {MAX_DROP_POINTS:.0f}), "
            f"published {100 * int8.summary['published']:.1f} % (float {100 * ours.summary['published']:.1f}), "
            f"published and within 10°5cm {100 * int8.published['10deg5cm']:.1f} % "
            f"(float {100 * ours.published['10deg5cm']:.1f})")


def ensure_test_split(root: str | Path, category: str, spec: dict[str, Any] | None = None, workers: int = 2) -> Path:
    """The test videos of ``category`` under ``<root>/<category>``, generated when missing or made with
    other arguments (recorded in ``<root>/<category>/split.json``). Returns the category directory."""
    from .data.synthetic import generate

    spec = dict(TEST_SPLIT if spec is None else spec)
    cat_dir = Path(root) / category
    stamp = cat_dir / "split.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return cat_dir
    generate(root, category, spec["split"], spec["videos"], frames=tuple(spec["frames"]), width=spec["width"],
             height=spec["height"], seed=spec["seed"], workers=workers, shapes=spec.get("shapes", "band"))
    stamp.write_text(json.dumps(spec))
    return cat_dir


def ensure_lit_split(root: str | Path, category: str, spec: dict[str, Any] | None = None, workers: int = 1) -> Path:
    """The lit videos of ``category`` under ``<root>/<category>`` (as :func:`ensure_test_split`, made by
    ``cse_train.data.lit.generate_lit``; the stamp also records how many frames the watchdog skipped, which
    does not take part in the comparison). Returns the category directory."""
    from .data.lit import generate_lit

    spec = dict(TEST_SPLIT_LIT if spec is None else spec)
    cat_dir = Path(root) / category
    stamp = cat_dir / "split.json"
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        done.pop("skipped_frames", None)
        if done == spec:
            return cat_dir
    stats = generate_lit(root, category, spec["videos"], frames=tuple(spec["frames"]), width=spec["width"],
                         height=spec["height"], seed=spec["seed"], split=spec["split"], workers=workers,
                         frame_timeout_s=spec["frame_timeout_s"], progress=False, renderer=spec["renderer"])
    print(f"lit {category}: {stats.rendered}/{stats.frames} frames rendered in {stats.render_s:.0f} s, "
          f"{stats.retried} retried, {stats.skipped} skipped by the stall watchdog")
    stamp.write_text(json.dumps(dict(spec, skipped_frames=stats.skipped)))
    return cat_dir


_MD_LABELS = {"5deg2cm": "5°2cm", "5deg5cm": "5°5cm", "10deg2cm": "10°2cm", "10deg5cm": "10°5cm"}


def _md_head(first: str, last: str) -> list[str]:
    cols = [first, *(_MD_LABELS.get(n, n) for n in METRIC_NAMES), "median rot°", "median cm", "median size cm", last]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _md_values(s: dict[str, float]) -> list[str]:
    vals = [f"{100 * s[c]:.1f}" for c in METRIC_NAMES]
    return vals + [f"{s['median_rotation_deg']:.2f}", f"{s['median_translation_cm']:.2f}",
                   f"{s.get('median_size_cm', float('nan')):.2f}"]


def markdown_table(reports: Sequence[EvalReport]) -> str:
    """Markdown accuracy table of one category: rows in :data:`BASELINE_LABELS` order, metrics in %; after a
    mode's row over every pose, its published-only row (untrusted poses = failures) where the plain table has
    one (``evaluate.has_published_row``); last column: share of frames published (trusted)."""
    lines = _md_head("mode", "published %")
    for r in reports:
        for suffix, s in table_rows(r):
            label = BASELINE_LABELS.get(r.mode, r.mode)
            if suffix == PUBLISHED_SUFFIX:
                label += ", published poses only (untrusted = failure)"
            published = r.summary.get("published")
            cells = [*_md_values(s), "" if published is None else f"{100 * published:.1f}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_handle_table(report: EvalReport) -> str:
    """Markdown metrics (every pose) of one mug report by handle visibility and side ("" for other categories)."""
    if not report.by_handle:
        return ""
    lines = _md_head(f"{BASELINE_LABELS.get(report.mode, report.mode)}: frames", "frames")
    for group, label in HANDLE_GROUPS.items():
        s = report.by_handle.get(group)
        if s:
            lines.append(f"| {label} | " + " | ".join([*_md_values(s), str(int(s["frames"]))]) + " |")
    return "\n".join(lines)


def _target_line(reports: Sequence[EvalReport]) -> str:
    """``targets (<n> missed): ...``: every :data:`TARGETS` check of the pipeline's report, each ``met`` or
    ``MISSED``."""
    by = {r.mode: r for r in reports}
    report = by["pipeline"]
    ours, plain = report.summary, by["umeyama_all"].summary if "umeyama_all" in by else None

    def check(label: str, value: float, target: float, at_most: bool = False) -> str:
        ok = value <= target if at_most else value >= target
        bound = f"{'<=' if at_most else '>='} {100 * target:.0f}"
        return f"{label} {100 * value:.1f} % ({bound}: {'met' if ok else 'MISSED'})"

    checks = [check(name, ours[key], TARGETS[key]) for name, key in
              (("IoU50", "IoU50"), ("10°5cm", "10deg5cm"), ("5°2cm", "5deg2cm"))]
    n = max(len(report.frames), 1)
    if SYMMETRY[report.category] is None:  # camera, laptop, mug
        flips = sum(r.get("rotation_deg", 0.0) > 90.0 for r in report.frames) / n
        checks.append(check("rotation > 90°", flips, TARGETS["flips"], at_most=True))
    checks.append(check("published", ours["published"], TARGETS["published"]))
    if report.published and ours["published"] > 0:
        checks.append(check("published within 10°5cm", report.published["10deg5cm"] / ours["published"],
                            TARGETS["precision"]))
    if plain is not None:
        ok = ours["10deg5cm"] >= plain["10deg5cm"]
        checks.append(f"vs (b) on 10°5cm {100 * ours['10deg5cm']:.1f} vs {100 * plain['10deg5cm']:.1f} "
                      f"({'met' if ok else 'MISSED'})")
    missed = sum("MISSED" in c for c in checks)
    return f"targets ({missed} missed): " + "; ".join(checks)


def evaluate_shipped(
    models_dir: str | Path = "models",
    data_root: str | Path = "data/eval",
    out_dir: str | Path = "out/eval",
    *,
    categories: Sequence[str] | None = None,
    spec: dict[str, Any] | None = None,
    baselines: Sequence[str] = tuple(BASELINE_LABELS),
    workers: int = 2,
    progress: bool = False,
    splits: Sequence[str] = ("synthetic",),
    lit_data_root: str | Path = "data/eval_lit",
    lit_spec: dict[str, Any] | None = None,
    wide_data_root: str | Path = "data/eval_wide",
    wide_spec: dict[str, Any] | None = None,
) -> dict[str, list[EvalReport]]:
    """Evaluate every ``<models_dir>/<category>.onnx`` (or those of ``categories``) on each of ``splits``
    (:data:`EVAL_SPLITS`); print tables; write JSON and ``<out_dir>/summary.md``. Returns
    ``<category>`` (synthetic split) or ``<category>/<split>`` (other splits) -> reports (in ``baselines`` order).

    Raises:
        FileNotFoundError: no model to evaluate.
        ValueError: an unknown split.
    """
    from .export import read_onnx_metadata

    unknown = [name for name in splits if name not in EVAL_SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(EVAL_SPLITS)}")
    t_start = time.perf_counter()
    paths = sorted(find_models(models_dir).values()) if Path(models_dir).is_dir() else []  # float files only
    if categories is not None:
        paths = [p for p in paths if p.stem in set(categories)]
    if not paths:
        which = f" for {list(categories)}" if categories else ""
        raise FileNotFoundError(f"no .onnx model under {models_dir}{which}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = {"synthetic": dict(spec or TEST_SPLIT), "lit": dict(lit_spec or TEST_SPLIT_LIT),
             "wide": dict(wide_spec or TEST_SPLIT_WIDE)}
    if spec is not None and lit_spec is None:  # the lit split follows the synthetic one's size and seed
        specs["lit"] = dict(TEST_SPLIT_LIT, **{k: v for k, v in spec.items() if k in TEST_SPLIT})
    results: dict[str, list[EvalReport]] = {}
    md = ["# make eval: shipped models on the held-out test splits\n"]
    # Every split first: the generator forks worker processes, which must not happen after onnxruntime and
    # torch have started their thread pools in this process (a forked child can inherit a held lock).
    metas = {path: read_onnx_metadata(path) for path in paths}
    split_dirs: dict[tuple[str, Path], Path] = {}
    t_gen: dict[tuple[str, Path], float] = {}
    active = list(splits)
    if "lit" in active:
        from .data.lit import lit_renderer_available

        ok, why = lit_renderer_available(renderer=specs["lit"]["renderer"])
        if not ok:
            print(f"lit split skipped: {why}")
            md.append(f"lit split skipped: {why}\n")
            active.remove("lit")
    for name in active:
        for path in paths:
            t0 = time.perf_counter()
            category = metas[path]["category"]
            if name == "lit":
                split_dirs[name, path] = ensure_lit_split(lit_data_root, category, specs[name], workers)
            else:
                root = wide_data_root if name == "wide" else data_root
                split_dirs[name, path] = ensure_test_split(root, category, specs[name], workers)
            t_gen[name, path] = time.perf_counter() - t0
    for name in active:
        split_out = out if name == "synthetic" else out / name
        split_out.mkdir(parents=True, exist_ok=True)
        md += [f"\n# {name}: {EVAL_SPLITS[name]}\n", f"split: {json.dumps(specs[name])}"]
        for path in paths:
            meta = metas[path]
            category = meta["category"]
            t0 = time.perf_counter()
            reports = run_evaluation(path, split_dirs[name, path], category=category, baselines=list(baselines),
                                     json_path=split_out / f"{category}.json", progress=progress,
                                     print_table=False)
            t_eval = time.perf_counter() - t0
            frames = int(reports[0].summary["frames"])
            print(f"\n== {category} [{name} split]: {path} (version {meta.get('version', '?')}, "
                  f"{path.stat().st_size / 2**20:.1f} MiB), {frames} frames; data {t_gen[name, path]:.0f} s, "
                  f"evaluation {t_eval:.0f} s")
            print(format_table(reports))
            md += [f"\n## {category} ({name} split)\n\n`{path.name}` version `{meta.get('version', '?')}`, "
                   f"{frames} frames\n", markdown_table(reports)]
            if name != "wide":  # the acceptance targets are for the synthetic and lit splits
                print(_target_line(reports))
                md += ["", _target_line(reports)]
            if handle_line(reports):
                ours = next((r for r in reports if r.mode == "pipeline"), reports[0])
                print(handle_line(reports))
                print(format_handle_table(ours))
                md += ["", handle_line(reports), "", markdown_handle_table(ours)]
            key = category if name == "synthetic" else f"{category}/{name}"
            results[key] = reports
            q = int8_path(path)
            if q.is_file():  # the file the node runs on the CPU by default: its own row
                int8 = run_evaluation(q, split_dirs[name, path], category=category, baselines=["pipeline"],
                                      json_path=split_out / f"{category}.int8.json", progress=progress,
                                      print_table=False)
                line = int8_line(reports, int8[0], q.name)
                print(format_table(int8))
                print(line)
                md += ["", line]
                results[f"{key}/int8"] = int8
    total = time.perf_counter() - t_start
    md.append(f"\ntotal {total / 60:.1f} min")
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print(f"\nmake eval: {len(paths)} model(s) on {len(active)} split(s) ({', '.join(active)}) in "
          f"{total / 60:.1f} min; markdown tables in {out / 'summary.md'}")
    return results
