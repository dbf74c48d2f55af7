"""Model versions for unit tests on the SQLite store of `conftest.registry`."""


def add_versions(reg, n: int, run_id=None) -> list[str]:
    """`n` bare versions of the ladder's model (no weights: aliases and tags are all they are read for)."""
    reg.raw.create_registered_model(reg.name)
    return [str(reg.raw.create_model_version(reg.name, "file:///nowhere", run_id=run_id,
                                             tags={"ladder.rung": str(k + 1)}).version) for k in range(n)]
