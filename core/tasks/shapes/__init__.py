"""Shapes-GenEval: a compositional text-to-image benchmark on procedurally rendered scenes, judged by
GenEval's rules on what a detector finds (exact on clean renders, robust to the blur, shifts, noise
and JPEG of generated images). See grammar.py, render.py, prompts.py, segment.py, detector.py,
shape_net.py, evaluator.py, degrade.py, robustness.py, judged.py and docs/methods/shapes_geneval.md."""

from core.tasks.shapes.evaluator import Evaluation, detect, evaluate, geneval_score
from core.tasks.shapes.grammar import COLORS, PALETTE, SHAPES, TAGS, Tokenizer, caption
from core.tasks.shapes.prompts import load_eval_prompts, sample_training_metadata, subset_per_category
from core.tasks.shapes.render import ground_truth_images, render_batch, render_scene, sample_scene

__all__ = [
    "COLORS",
    "PALETTE",
    "SHAPES",
    "TAGS",
    "Evaluation",
    "Tokenizer",
    "caption",
    "detect",
    "evaluate",
    "geneval_score",
    "ground_truth_images",
    "load_eval_prompts",
    "render_batch",
    "render_scene",
    "sample_scene",
    "sample_training_metadata",
    "subset_per_category",
]
