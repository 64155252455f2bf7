"""Each private Captum helper the package relies on still behaves as the package assumes."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from deconvnet_attr import captum_compat as cc

PACKAGE = Path(__file__).resolve().parents[1] / "deconvnet_attr"


def test_private_captum_imports_live_in_one_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "captum_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            module = getattr(node, "module", None) if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
            if any(name.startswith("captum._") for name in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_formatting_helpers():
    x = torch.ones(2, 3)
    assert cc._is_tuple((x,)) and not cc._is_tuple(x)
    assert cc._format_tensor_into_tuples(x)[0] is x
    assert cc._format_tensor_into_tuples(None) is None
    assert cc._format_output(False, (x,)) is x
    assert cc._format_output(True, (x,)) == (x,)
    assert cc._format_additional_forward_args(None) is None
    assert cc._format_additional_forward_args(5) == (5,)
    assert cc._format_additional_forward_args((5, x)) == (5, x)


def test_run_forward_selects_targets_like_indexing():
    out = torch.arange(12.0).reshape(3, 4)

    def forward(a, b):
        return out * a + b

    one, zero = torch.ones(3, 1), torch.zeros(3, 1)
    got = cc._run_forward(forward, (one,), [0, 3, 1], (zero,))
    assert torch.equal(got, out[torch.arange(3), torch.tensor([0, 3, 1])])
    assert torch.equal(cc._run_forward(forward, (one,), 2, (zero,)), out[:, 2])
    assert torch.equal(cc._run_forward(forward, (one,), None, (zero,)), out)


def test_expansion_helpers_repeat_along_the_batch():
    x = torch.tensor([[1.0], [2.0]])
    assert cc._expand_target([0, 1], 3, cc.ExpansionTypes.repeat) == [0, 1, 0, 1, 0, 1]
    assert cc._expand_target(2, 3, cc.ExpansionTypes.repeat) == 2
    (expanded, scalar) = cc._expand_additional_forward_args((x, 7), 2, cc.ExpansionTypes.repeat)
    assert torch.equal(expanded, torch.cat([x, x])) and scalar == 7


def test_gradient_requirements_are_set_and_undone():
    a, b = torch.zeros(2), torch.zeros(2, requires_grad=True)
    mask = cc.apply_gradient_requirements((a, b))
    assert a.requires_grad and b.requires_grad
    cc.undo_gradient_requirements((a, b), mask)
    assert not a.requires_grad and b.requires_grad


def test_neuron_grad_fn_differentiates_one_neuron_of_a_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3, requires_grad=True)
    grad_fn = cc.construct_neuron_grad_fn(model[0], 2)
    (grad,) = grad_fn(model, (x,))
    expected = model[0].weight[2].detach().expand(5, 3)
    assert torch.allclose(grad, expected)
