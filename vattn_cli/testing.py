"""Helpers for users' own test suites.

::

    from vattn_cli.testing import check_scheme

    def test_my_scheme_conforms():
        check_scheme("my_pkg.attn:MyAttention")   # or the class itself, or a registered name
"""

from __future__ import annotations

from torch import nn

from vattn_cli.measure.conformance import CheckResult, failures, run_checks


def check_scheme(
    scheme: str | type | nn.Module,
    *,
    frames: int | None = None,
    img_size: int | None = None,
    patch: int = 16,
    device: str = "cpu",
    seed: int = 0,
) -> list[CheckResult]:
    """Run the conformance suite (``vattn zoo --check``) and fail like a test if any check fails.

    Returns every check's result when all pass; raises ``AssertionError`` listing the failed
    checks otherwise. A class that is not registered is registered for the run only.
    """
    setting = {k: v for k, v in {"frames": frames, "img_size": img_size}.items() if v is not None}
    results = run_checks(scheme, patch=patch, device=device, seed=seed, **setting)
    failed = failures(results)
    if failed:
        label = results[0].scheme
        lines = "\n".join(f"  {r.check}: {r.detail}" for r in failed)
        raise AssertionError(f"scheme {label!r} fails {len(failed)} conformance check(s):\n{lines}")
    return results
