"""Shapes-GenEval: a compositional text-to-image benchmark on procedurally rendered scenes with an
exact evaluator (GenEval's protocol where detection is exact). See render.py, grammar.py,
evaluator.py and prompts.py."""

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
