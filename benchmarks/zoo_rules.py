"""A rule over the model zoo: ours vs an independent fx reference vs Captum's class for it.

Prints a markdown table: per model, how many activation calls the rule caught, the max relative
error of ours (``DeconvProjection`` for ``--rule deconvnet``, ``GuidedBackprop`` for
``--rule guided``) against the torch.fx-rewritten reference of that rule (tests/fx_reference.py),
how far Captum's ``Deconvolution`` / ``GuidedBackprop`` and the plain gradient are from the
reference, and how far Captum is from the plain gradient (0 = its hooks changed nothing). Errors
are ``max |a - ref| / max |ref|``. Random weights, 2 images.

    python benchmarks/zoo_rules.py --rule deconvnet|guided [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import captum.attr as ca
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fx_reference import reference_deconvnet, reference_guided  # noqa: E402
from test_deconv import TIMM, TORCHVISION, build  # noqa: E402

from deconvnet_attr import DeconvProjection, GuidedBackprop  # noqa: E402
from deconvnet_attr.intercept import apply_rule  # noqa: E402
from deconvnet_attr.rules import DECONVNET, GUIDED  # noqa: E402

RULES = {
    # rule name: (rule, our class, the fx reference, Captum's class)
    "deconvnet": (DECONVNET, DeconvProjection, reference_deconvnet, ca.Deconvolution),
    "guided": (GUIDED, GuidedBackprop, reference_guided, ca.GuidedBackprop),
}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def row(rule_name: str, source: str, name: str, size: int) -> str:
    rule, ours_class, reference, captum_class = RULES[rule_name]
    model = build(source, name)
    side = max(size, 80) if name == "inception_v3" else size
    x = torch.randn(2, 3, side, side)
    with apply_rule(rule, model) as seen:
        model(x.clone().requires_grad_())
    ours = ours_class(model).attribute(x.clone(), target=1)
    ref_model, traced = reference(model)
    leaf = x.clone().requires_grad_()
    (ref,) = torch.autograd.grad(ref_model(leaf)[:, 1].sum(), leaf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = captum_class(model).attribute(x.clone(), target=1)
        plain = ca.Saliency(model).attribute(x.clone(), target=1, abs=False)
    return (
        f"| {source}:{name} | {seen.count} | {rel(ours, ref):.1e} | {rel(captum, ref):.2f} | "
        f"{rel(plain, ref):.2f} | {rel(captum, plain):.2f} | {'fx' if traced else 'modules'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", choices=sorted(RULES), required=True, help="the rule to check")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"| model | activations ruled ({args.rule}) | ours vs reference (max rel err) "
        "| Captum vs reference | plain gradient vs reference | Captum vs plain gradient "
        "| reference |"
    )
    print("|---|---|---|---|---|---|---|")
    for source, names in (("tv", TORCHVISION), ("timm", TIMM)):
        for name in names:
            print(row(args.rule, source, name, args.size), flush=True)


if __name__ == "__main__":
    main()
