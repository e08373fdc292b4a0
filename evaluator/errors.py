"""The evaluator's exception root. Bad user input (unknown task, bad shape) raises it;
a failing candidate never does: it gets an `EvalResult` with a status instead."""


class EvalError(Exception):
    """Something the user asked of the evaluator cannot be done; the message says what to do."""
