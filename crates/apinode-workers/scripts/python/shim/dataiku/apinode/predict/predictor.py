"""Base classes of Dataiku's custom Python prediction endpoints.

Subclass one of them and implement `predict(features_df)`: it gets a pandas DataFrame with one
row per record to score, and returns
- for regression: a Series of predictions, or `(series, custom_keys)`;
- for classification: a Series of predicted labels, `(series, probas_df)` or
  `(series, probas_df, custom_keys)`, with one probas column per class.
`custom_keys` is a list with one dict (or None) per row. NaN or None means "not predicted".
"""


class Predictor(object):
    """The constructor receives the path of the endpoint's managed folder (None when none)."""

    def __init__(self, data_folder=None):
        self.data_folder = data_folder

    def predict(self, features_df):
        raise NotImplementedError("the predictor class must implement predict(features_df)")


class ClassificationPredictor(Predictor):
    pass


class RegressionPredictor(Predictor):
    pass
