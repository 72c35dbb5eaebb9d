"""Tokenised text inputs: raw strings that the model's own "preprocess" layer (a `tlkeras.text_layers.Packer`:
a KerasHub preset's tokenizer and packer, or a TF Hub preprocessing model) turns into a text encoder's token
ids inside the graph.

Everything a client sees is as for `TextInputs` (strings in, `text` in the export); what differs is
the model's first layers, the TensorFlow Text ops its export needs when loaded, and the count of
texts longer than the sequence length.
"""

from __future__ import annotations

from tlkeras.inputs.text import TextInputs

TEXT_OPS_MODULE = "tensorflow_text"


class TokenizedTextInputs(TextInputs):
    """Strings [N] tokenised in the model (a KerasHub or TF Hub BERT-class encoder).

    >>> kind = TokenizedTextInputs()
    >>> kind.signature_input, kind.serving_imports, kind.classifier
    ('text', ('tensorflow_text',), 'text')
    """

    name = "tokens"
    #: modules whose ops the export's graph uses: imported before a SavedModel of it is loaded
    serving_imports = (TEXT_OPS_MODULE,)

    def for_columns(self, columns):
        return "token_pairs" if isinstance(columns, (list, tuple)) else "tokens"  # pairs: packed as two segments

    # === Model ===

    def build(self, spec, size, weights):
        import keras

        inputs = keras.Input((), dtype="string", name="text")
        packer = spec.tokenizer()
        base = spec.build(None, weights)
        return inputs, base(packer(inputs))

    def data_facts(self, model, bundle) -> dict:
        """How many training texts the packer cuts (longer than the sequence length), logged when any is."""
        from tlkeras._logging import get_logger
        from tlkeras.modelinfo import get_preprocessing

        packer = get_preprocessing(model)
        texts = bundle.train_examples.texts
        facts = {"sequence_length": packer.sequence_length, "truncated_train_texts": packer.truncated(texts),
                 "train_texts": len(texts)}
        if facts["truncated_train_texts"]:
            get_logger().info("data: %d of %d training %s are longer than %d tokens and are cut "
                              "(backbone_options.sequence_length)", facts["truncated_train_texts"], len(texts),
                              self.noun, packer.sequence_length)
        return facts

    def card(self, model):
        from tlkeras.modelinfo import get_preprocessing

        packer = get_preprocessing(model)
        return {
            "task": "text classification",
            "inputs": {"serving_default": "text: tf.string [N], raw UTF-8 strings; the model tokenises them inside "
                                          "the graph"},
            "preprocessing": f"inside the model: {packer.description}, {packer.sequence_length} tokens per text "
                             "(longer texts are cut)",
            "serving_imports": list(self.serving_imports),
            "serving_note": "the tokenizer runs TensorFlow Text ops: TF Serving's model server links them; a Python "
                            "client runs `import tensorflow_text` before tf.saved_model.load",
        }
