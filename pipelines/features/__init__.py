"""Features: text (tokens), embedding (FastText), sentence (multilingual encoder), encoded (token-id arrays),
batches."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "batches": (
        "EncodedSplit",
        "collate",
        "gather_keys",
        "gather_keys_t",
        "length_bucketed_batches",
        "pad_keys",
        "pick_device",
        "row_offsets",
    ),
    "embedding": (
        "DATASET_COLUMNS",
        "EMBEDDING_SHA_TAG",
        "EmbeddingConfig",
        "EmbeddingIntegrityError",
        "SPECIALS",
        "TitleEncoder",
        "build_ngram_vocab",
        "build_vocab",
        "char_ngrams",
        "embedding_digests",
        "embedding_matrix",
        "load_fasttext",
        "parse_embedding_record",
        "prepare_dataset",
        "read_split",
        "train_embedding",
        "train_fasttext",
        "verify_embedding",
    ),
    "encoded": (
        "CHUNK",
        "EncodedDataset",
        "SPLITS",
        "encode_dataset",
        "encode_titles",
        "load_encoded",
        "sentence_vectors",
    ),
    "sentence": (
        "BATCH",
        "ENCODERS",
        "SentenceEncoderMissing",
        "SentenceTable",
        "WordEncoder",
        "WordVectorCache",
        "dim",
    ),
    "text": ("STOPWORDS", "STOPWORDS_ES", "STOPWORDS_PT", "TextConfig", "normalize", "tokenize", "tokenizer"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
