"""Safety policy, classifiers and review formats. Works on embeddings, frames and plain records; never Ray."""
