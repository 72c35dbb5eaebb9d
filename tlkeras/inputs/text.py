"""Text inputs: raw strings. The backbone (a text-embedding module) tokenises them itself, so
training and serving feed it the same thing and there is nothing to skew."""

from __future__ import annotations

import contextlib
import os
import sys

from tlkeras.inputs.inputs import Inputs


class TextInputs(Inputs):
    """Strings [N] for the model and for its export's `text` input.

    >>> TextInputs().signature_input, TextInputs().file_formats
    ('text', ())
    """

    name = "text"
    noun = "texts"
    classifier = "text"
    signature_input = "text"
    predict_argument = "TEXT_OR_FILE"
    file_formats = ()  # a text module's string ops have no TFLite/ONNX form here

    def for_columns(self, columns):
        if isinstance(columns, (list, tuple)):
            from tlkeras.errors import ConfigError

            raise ConfigError(f"text_column: {list(columns)!r} names two columns (sentence pairs), but a "
                              "text-embedding module reads one text; pairs need an encoder that packs them: a KerasHub BERT-class "
                              "preset (backbone: kerashub:<preset>).")
        return self.name

    # === Model ===

    def build(self, spec, size, weights):
        import keras

        base = spec.build(None, weights)
        inputs = keras.Input((), dtype="string", name="text")
        return inputs, base(inputs)

    def prediction_spec(self, model):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.string)

    # === Data ===

    def make_datasets(self, cfg, size):
        from tlkeras.data.text import make_text_datasets

        return make_text_datasets(cfg)

    def load_examples(self, source, key, class_names, **options):
        from tlkeras.data.text import load_text_examples

        options.pop("image_column", None)
        options.pop("max_pixels", None)
        return load_text_examples(source, key, class_names, **options)

    def load_unlabeled(self, source, cfg, size):
        from tlkeras.data.text import load_unlabeled_texts

        return load_unlabeled_texts(source, cfg)

    def with_training(self, bundle, examples, cfg, size):
        from tlkeras.data.text import with_training_texts

        return with_training_texts(bundle, examples, cfg)

    def with_split(self, bundle, train, val, cfg, size):
        import dataclasses

        from tlkeras.data.text import text_pipeline, with_training_texts

        bundle = with_training_texts(bundle, train, cfg)
        return dataclasses.replace(bundle, val_examples=val,
                                   val=text_pipeline(val, cfg.batch_size, training=False, seed=cfg.seed))

    def evaluation_pipeline(self, examples, model, batch_size):
        from tlkeras.data.text import text_pipeline

        return text_pipeline(examples, batch_size, training=False, seed=0)

    # === Serving ===

    def serving_functions(self, outputs, model):
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            return outputs(text)

        return {"serving_default": serve_text}

    def export_samples(self, examples, count, task):
        return examples.sample_texts(count, task)

    def synthetic_samples(self, model):
        """A few texts of different lengths (an empty one included)."""
        return ["a short text", "", "Another, somewhat longer text: with punctuation and UPPER case words.", "ünïcödé ✓"]

    def model_batch(self, samples, model):
        import tensorflow as tf

        return tf.constant([str(t) for t in samples], dtype=tf.string)

    def card(self, model):
        return {
            "task": "text classification",
            "inputs": {"serving_default": "text: tf.string [N], raw UTF-8 strings; the backbone tokenises them "
                                          "inside the graph"},
            "preprocessing": "none outside the model: the text-embedding module's own tokenisation",
        }

    # === Prediction ===

    def collect(self, items):
        """Each item is a text, or a file of one text per non-empty line ("file:line"), or "-" for
        the lines of standard input."""
        from tlkeras.errors import TlkerasError

        entries = []
        for item in items:
            if item != "-" and os.path.isdir(item):
                raise TlkerasError(f"{item!r} is a folder; a text classifier takes texts, files of one text per line "
                                   f"or - (standard input): pass its files, e.g. {os.path.join(item, '*.txt')}.")
            if item != "-" and not os.path.isfile(item):
                entries.append(({"text": item, "source": item}, item))
                continue
            name = "stdin" if item == "-" else item
            try:
                with (contextlib.nullcontext(sys.stdin) if item == "-" else open(item, encoding="utf-8-sig")) as f:
                    for number, line in enumerate(f, start=1):
                        if line.strip():
                            text = line.rstrip("\r\n")
                            entries.append(({"text": text, "source": f"{name}:{number}"}, text))
            except UnicodeDecodeError as e:
                raise TlkerasError(f"{name!r} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                                   "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
        return entries

    def serve(self, serve, payloads):
        import tensorflow as tf

        if not payloads:
            return [], []
        probs = serve(text=tf.constant(list(payloads), dtype=tf.string))["probabilities"].numpy()
        return list(enumerate(probs)), []

    def example_payloads(self, examples, rows):
        return [examples.texts[i] for i in rows]
