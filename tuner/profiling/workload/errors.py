"""The one error type the workload raises for things a user can get wrong."""


class WorkloadError(ValueError):
    """A user-caused workload problem (bad scale, unknown workload, unusable weights).

    The message is one sentence the CLI can print as is.
    """
