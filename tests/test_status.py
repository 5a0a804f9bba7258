"""The status chain: ODE status -> fit status -> table word -> exit code."""

import jax.numpy as jnp
import numpy as np

import fitcsc
from fitcsc._status import Exit, FitStatus, Status, fit_status, job_exit, outcome
from fitcsc.cli import main


def test_every_code_has_a_message_and_the_chain_maps_failures_up():
    for enum_ in (Status, FitStatus):
        for code in enum_:
            assert code.message and "\n" not in code.message
    # the public names are the chain's
    assert fitcsc.Status is Status and fitcsc.FitStatus is FitStatus
    ok, cap = jnp.asarray(True), jnp.asarray(False)
    z, loss = jnp.zeros(2), jnp.asarray(1.0)
    assert int(fit_status(ok, cap, Status.SUCCESS, loss, z)) == FitStatus.CONVERGED
    for ode in (Status.MAX_STEPS, Status.SOLVER_FAILURE, Status.NONFINITE):
        # any failed solve at the estimate is a failed fit, whatever the optimiser said
        assert int(fit_status(ok, cap, ode, loss, z)) == FitStatus.SOLVER_FAILURE
    assert int(fit_status(jnp.asarray(False), jnp.asarray(True), 0, loss, z)) == 1
    assert int(fit_status(ok, cap, 0, jnp.asarray(np.nan), z)) == FitStatus.NONFINITE
    assert [FitStatus(c).label for c in (0, 1, 2, 3, -1)] == [
        "converged", "max_steps", "solver_failure", "nonfinite", "error"]
    assert [outcome(c) for c in (0, 1, 2, 3, -1)] == ["ok"] + ["failed"] * 4
    assert (job_exit(True), job_exit(False)) == (0, 1)


def test_exit_codes_of_the_command_line(tmp_path, capsys):
    assert main(["fit", "--data", str(tmp_path / "missing.csv"),
                 "--out", str(tmp_path / "o")]) == Exit.INPUT == 2
    assert "missing.csv" in capsys.readouterr().err
