"""The Inputs role: what a model takes, asked wherever a model meets data.

An Inputs kind says how the model's input layer is made, which pipelines feed it in training,
what the export's serving signatures take (and call: the very decode/resize of training), which
samples check an export, how `predict` reads what it is given and how `evaluate` feeds an export.
Training, export, predict and evaluate ask the model's Inputs kind (`model_info(model).inputs`);
none of them branches on it.

A new kind is one module with an `Inputs` subclass and one line in `tlkeras.inputs.INPUTS`.
"""

from __future__ import annotations


class Inputs:
    """The interface; see `ImageInputs` and `TextInputs`."""

    #: registry name, as the model's metadata holds it
    name: str = ""
    #: what the logs call a batch of them
    noun: str = "examples"
    #: what a classifier of these inputs is called in messages ("an image classifier")
    classifier: str = ""
    #: modules whose ops the export's graph uses, imported before a SavedModel of it is loaded
    serving_imports: tuple = ()
    #: the name of serving_default's input (TF Serving's REST API decodes "*_bytes" inputs from base64)
    signature_input: str = ""
    #: the export formats (besides a SavedModel) that can carry this kind of input
    file_formats: tuple = ()
    #: what `tlkeras predict` takes, as its usage line names it
    predict_argument: str = "INPUTS"

    @property
    def signature_names(self) -> tuple:
        """The names of serving_default's inputs, in the model's input order."""
        return (self.signature_input,)

    def for_columns(self, columns) -> str:
        """The name of the kind that reads `columns` (the config's text_column: one name, or a list of two
        for sentence pairs): this kind's, or its pair twin's; a ConfigError when it has none."""
        return self.name

    # === Model ===

    def size(self, spec, image_size):
        """The input size a model is built at (None where it has none)."""
        return None

    def build(self, spec, size, weights):
        """(keras.Input, features): the model's input and the backbone's output on it."""
        raise NotImplementedError

    def input_options(self, cfg) -> dict:
        """The config's settings of how inputs are read, kept with the model for serving (`ModelInfo`)."""
        return {}

    def data_facts(self, model, bundle) -> dict:
        """Facts about the training data as this model reads it, for run.json (e.g. how many texts are
        longer than the sequence length; the kind logs what a user should know); {} when there is nothing."""
        return {}

    def prediction_spec(self, model):
        """The tf.TensorSpec of a batch of the model's own inputs."""
        raise NotImplementedError

    # === Data ===

    def make_datasets(self, cfg, size):
        """The training and validation pipelines (a `DataBundle`)."""
        raise NotImplementedError

    def load_examples(self, source, key, class_names, **options):
        """(examples, class names, skipped) of labelled data, for `evaluate` and the export checks."""
        raise NotImplementedError

    #: the test-time augmentations this kind has (`tta_views`), "none" first; "crops:N" stands for every N
    tta_names: tuple = ("none",)

    def check_tta(self, name: str) -> None:
        """A ConfigError when this kind has no `name` views (no TensorFlow needed: checked before any work)."""
        from tlkeras.config import tta_problem

        known = name in self.tta_names or ("crops:N" in self.tta_names and str(name).startswith("crops:"))
        if not known or tta_problem(name):
            from tlkeras.errors import ConfigError

            if self.tta_names == ("none",):
                raise ConfigError(f"tta: {name!r} does not apply to {self.noun}: they have no views to average; use "
                                  "tta: none.")
            if known:
                raise ConfigError(f"tta: {tta_problem(name)}.")
            raise ConfigError(f"tta: {name!r} is not valid for {self.noun}: use one of {', '.join(self.tta_names)}.")

    def tta_views(self, name: str) -> list:
        """Test-time augmentation: functions making the other views of a batch of the model's inputs, whose
        probabilities are averaged with the batch's own (`tta`: none gives [])."""
        self.check_tta(name)
        return []

    def load_unlabeled(self, source, cfg, size):
        """(examples with placeholder labels, skipped) of unlabelled data, for self-training."""
        raise NotImplementedError

    def with_training(self, bundle, examples, cfg, size):
        """`bundle` (a `DataBundle`) training on `examples` instead, its validation unchanged."""
        raise NotImplementedError

    def with_split(self, bundle, train, val, cfg, size):
        """`bundle` (a `DataBundle`) training on `train` and validated on `val` instead (its classes, Task and
        augmentation unchanged): a fold of a k-fold search."""
        raise NotImplementedError

    def evaluation_pipeline(self, examples, model, batch_size: int):
        raise NotImplementedError

    def pictures(self, examples, size):
        """`rows -> list of RGB arrays` of examples for the report's pictures, or None (nothing to show)."""
        return None

    # === Serving ===

    def serving_functions(self, outputs, model) -> dict:
        """{signature name: tf.function} calling `outputs(model inputs)` from what clients send."""
        raise NotImplementedError

    def export_samples(self, examples, count: int, task) -> list:
        """What to check an export with: client payloads spread over the classes."""
        raise NotImplementedError

    def synthetic_samples(self, model) -> list:
        """Payloads to check an export with when no data is at hand."""
        raise NotImplementedError

    def model_batch(self, samples, model):
        """The model's own input batch for client payloads (what the export must do inside)."""
        raise NotImplementedError

    def card(self, model) -> dict:
        """The model card's fields about the inputs ("task", "inputs", "preprocessing", ...)."""
        raise NotImplementedError

    # === Prediction ===

    def collect(self, items: list[str]) -> list:
        """(row fields, payload) of each of `predict`'s inputs (a payload may be read only when served)."""
        raise NotImplementedError

    def serve(self, serve, payloads: list):
        """(rows served as [(index, probabilities)], skipped [(index, reason)]) of one batch of
        `collect`'s payloads."""
        raise NotImplementedError

    def request(self, payloads) -> dict:
        """{serving_default input name: list of values} of a batch of client payloads (what a TF Serving
        request carries; one entry per name of `signature_names`)."""
        return {self.signature_input: list(payloads)}

    def example_payloads(self, examples, rows) -> list:
        """Client payloads of labelled examples (for evaluating an export as TF Serving would)."""
        raise NotImplementedError
