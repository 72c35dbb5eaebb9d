"""Sentence pairs for a tokenised text encoder: two raw strings per example (a question and its
candidate duplicate, a premise and a hypothesis), packed as the encoder expects (BERT: [CLS] a
[SEP] b [SEP], with segment ids 0 then 1) by the preset's own packer inside the model.

The config names the two columns (`text_column: [question1, question2]`); the export's
serving_default takes `text_a` and `text_b` (tf.string [N] each); `tlkeras predict` reads a pair
per argument or per line as the two texts with a tab between them.
"""

from __future__ import annotations

import contextlib
import os
import sys

from tlkeras.inputs.tokens import TokenizedTextInputs

#: the export's inputs, in the model's input order
PAIR_INPUTS = ("text_a", "text_b")
SEPARATOR = "\t"


class TokenPairInputs(TokenizedTextInputs):
    """Two strings [N] each, packed together in the model (a KerasHub BERT-class encoder).

    >>> kind = TokenPairInputs()
    >>> kind.signature_names, kind.request([("a cat", "a dog"), ("sun", "")])
    (('text_a', 'text_b'), {'text_a': ['a cat', 'sun'], 'text_b': ['a dog', '']})
    """

    name = "token_pairs"
    noun = "text pairs"
    classifier = "text-pair"
    signature_input = PAIR_INPUTS[0]
    predict_argument = "PAIR_OR_FILE"

    @property
    def signature_names(self) -> tuple:
        return PAIR_INPUTS

    def for_columns(self, columns):
        if isinstance(columns, (list, tuple)) and len(columns) == 2:
            return self.name
        return super().for_columns(columns)  # one column: the single-text kind's

    # === Model ===

    def build(self, spec, size, weights):
        import keras

        inputs = [keras.Input((), dtype="string", name=name) for name in PAIR_INPUTS]
        packer = spec.tokenizer()
        base = spec.build(None, weights)
        return inputs, base(packer(tuple(inputs)))

    def prediction_spec(self, model):
        import tensorflow as tf

        return tuple(tf.TensorSpec([None], tf.string) for _ in PAIR_INPUTS)  # as the pipeline yields them

    # === Serving ===

    def serving_functions(self, outputs, model):
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=name) for name in PAIR_INPUTS])
        def serve_pairs(text_a, text_b):
            return outputs([text_a, text_b])

        return {"serving_default": serve_pairs}

    def synthetic_samples(self, model):
        """A few pairs of different lengths (an empty text among them)."""
        return [("a short text", "another short text"), ("", "only the second text"),
                ("Is this the same question, with punctuation?", "ünïcödé ✓"), ("one", "")]

    def model_batch(self, samples, model):
        import tensorflow as tf

        return tuple(tf.constant(column, dtype=tf.string) for column in self.request(samples).values())

    def request(self, payloads) -> dict:
        pairs = [tuple(p) for p in payloads]
        return {name: [str(pair[i]) for pair in pairs] for i, name in enumerate(PAIR_INPUTS)}

    def card(self, model):
        card = super().card(model)
        card["task"] = "text-pair classification"
        card["inputs"] = {"serving_default": "text_a, text_b: tf.string [N] each, raw UTF-8 strings (the first and "
                                             "second text of each pair); the model tokenises and packs them inside "
                                             "the graph"}
        card["preprocessing"] = card["preprocessing"].replace(
            "per text", "per pair (places shared a token at a time: a long pair loses tokens from its longer text)")
        return card

    # === Prediction ===

    def collect(self, items):
        """Each item is a pair "first text<TAB>second text", or a file of one such pair per non-empty
        line ("file:line"), or "-" for the lines of standard input."""
        entries = []

        def entry(line, source):
            a, _, b = line.partition(SEPARATOR)
            entries.append(({"text": line, "text_a": a, "text_b": b, "source": source}, line))

        for item in items:
            if item != "-" and not os.path.isfile(item):
                entry(item, item)
                continue
            name = "stdin" if item == "-" else item
            with (contextlib.nullcontext(sys.stdin) if item == "-" else open(item, encoding="utf-8-sig")) as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        entry(line.rstrip("\r\n"), f"{name}:{number}")
        return entries

    def serve(self, serve, payloads):
        import tensorflow as tf

        rows = [i for i, line in enumerate(payloads) if SEPARATOR in line]
        skipped = [(i, "not a pair: put a tab between the two texts") for i, line in enumerate(payloads)
                   if SEPARATOR not in line]
        if not rows:
            return [], skipped
        request = self.request([payloads[i].split(SEPARATOR, 1) for i in rows])
        probs = serve(**{name: tf.constant(values, dtype=tf.string) for name, values in request.items()})
        return list(zip(rows, probs["probabilities"].numpy())), skipped

    def example_payloads(self, examples, rows):
        return [examples.texts[i] for i in rows]
