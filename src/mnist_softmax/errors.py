"""Base class of the failures whose message says everything: stages print them without a traceback."""


class ExplainedError(Exception):
    pass
