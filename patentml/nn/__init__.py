"""PyTorch models of PatentML: the paper's CNN head over GloVe ids or precomputed (BERT) token vectors."""

from patentml.nn.cnn import CNNConfig, PaperCNN

__all__ = ["CNNConfig", "PaperCNN"]
