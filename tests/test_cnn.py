"""The paper's CNN: shapes, exact parameter counts, padding invariance, frozen vs learned embedding rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patentml.exceptions import ConfigError
from patentml.losses import make_loss
from patentml.nn import CNNConfig, PaperCNN
from patentml.text import pad_batch

# Small config used throughout: vocab 50, dim 8, 7 labels, 6 filters per kernel (2, 3, 4, 5), dense 10.
SMALL = dict(vocab_size=50, embed_dim=8, num_labels=7, num_filters=6, hidden=10)


def small_count(vocab: int, dim: int, labels: int, filters: int, hidden: int, kernels: tuple[int, ...]) -> int:
    """Parameter count by hand: embedding + convs (k*d*f + f each) + dense + BatchNorm (gamma, beta) + output."""
    embedding = vocab * dim
    convs = sum(k * dim * filters + filters for k in kernels)
    dense = len(kernels) * filters * hidden + hidden
    batch_norm = 2 * hidden
    output = hidden * labels + labels
    return embedding + convs + dense + batch_norm + output


def test_exact_parameter_count_small() -> None:
    # 50*8 = 400; convs (2+3+4+5)*8*6 + 4*6 = 672 + 24 = 696; dense 24*10 + 10 = 250; BN 20; out 10*7 + 7 = 77.
    assert small_count(50, 8, 7, 6, 10, (2, 3, 4, 5)) == 1443
    trainable = PaperCNN(CNNConfig(**SMALL, trainable_embeddings=True))
    assert trainable.count_parameters() == 1443
    assert trainable.count_parameters(trainable_only=True) == 1443

    # Frozen table plus an OOV table of 3 learned rows and its fixed zero row: 4 * 8 = 32 more.
    frozen = PaperCNN(CNNConfig(**SMALL, num_oov=3))
    assert frozen.count_parameters() == 1443 + 32
    assert frozen.count_parameters(trainable_only=True) == 1443 + 32 - 400

    vectors = PaperCNN(CNNConfig(**{**SMALL, "vocab_size": 0}, input_mode="vectors"))
    assert vectors.count_parameters() == 1443 - 400


def test_paper_config_parameter_count() -> None:
    # GloVe 6B 100d, 632 labels, 512 filters, dense 512. Without the embedding:
    # convs 14*100*512 + 4*512 = 718,848; dense 2048*512 + 512 = 1,049,088; BN 1,024; out 512*632 + 632 = 324,216.
    head = 718_848 + 1_049_088 + 1_024 + 324_216
    assert head == 2_093_176
    model = PaperCNN(CNNConfig(vocab_size=1000, embed_dim=100, num_labels=632))
    assert model.count_parameters() == 1000 * 100 + head == small_count(1000, 100, 632, 512, 512, (2, 3, 4, 5))
    # The paper's 23.5M (Keras also counts BatchNorm's 1,024 moving statistics) implies a vocabulary of
    # about 214k words: plausible for USPTO-2M's 237k after a minimum count.
    implied_vocab = (23_500_000 - head - 1_024) / 100
    print(f"paper GloVe+CNN 23.5M params <=> vocabulary of ~{implied_vocab:,.0f} words")
    bert_head = small_count(0, 768, 632, 512, 512, (2, 3, 4, 5))
    print(f"BERT+CNN head over 768-d vectors: {bert_head:,} params (+ ~109.5M of BERT-base ~ paper's 115.9M)")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"input_mode": "tokens"}, "input_mode"),
        ({"dropout": 1.0}, "dropout"),
        ({"kernel_sizes": ()}, "kernel_sizes"),
        ({"num_filters": 0}, "num_filters"),
        ({"padding_idx": 50}, "padding_idx"),
        ({"num_oov": 3, "trainable_embeddings": True}, "num_oov"),
        ({"input_mode": "vectors"}, "vocab_size=0"),
        ({"vocab_size": 1}, "vocab_size"),
    ],
)
def test_config_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CNNConfig(**{**SMALL, **overrides})


def test_config_dict_round_trip_is_json() -> None:
    config = CNNConfig(**SMALL, kernel_sizes=(2, 3), num_oov=4, dropout=0.3)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["kernel_sizes"] == [2, 3]
    assert CNNConfig.from_dict(data) == config
    assert PaperCNN.from_config_dict(data).to_config_dict() == data
    with pytest.raises(ConfigError, match="unknown CNN config keys"):
        CNNConfig.from_dict({**data, "heads": 8})


def test_output_shapes_ids_and_vectors() -> None:
    torch.manual_seed(0)
    model = PaperCNN(CNNConfig(**SMALL))
    ids, lengths = pad_batch([[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [2]])
    assert model(ids, lengths).shape == (3, 7)  # (batch, num_labels)
    proba = model.predict_proba(ids, lengths)
    assert proba.shape == (3, 7) and bool(((proba > 0) & (proba < 1)).all())
    assert model.training  # predict_proba switched to eval and back

    vec = PaperCNN(CNNConfig(**{**SMALL, "vocab_size": 0}, input_mode="vectors"))
    assert vec(torch.randn(4, 9, 8), torch.tensor([9, 5, 1, 3])).shape == (4, 7)
    with pytest.raises(AssertionError, match="widest kernel"):
        model(torch.ones(2, 4, dtype=torch.long))


def repad(ids: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros(ids.shape[0], width, dtype=torch.long)
    out[:, : ids.shape[1]] = ids
    return out


@pytest.mark.parametrize("trainable", [True, False])
def test_padding_never_changes_the_output(trainable: bool) -> None:
    torch.manual_seed(1)
    vectors = torch.randn(50, 8)
    known = torch.rand(50) > 0.3
    model = PaperCNN.from_pretrained(vectors, known, num_labels=7, trainable_embeddings=trainable,
                                     num_filters=6, hidden=10)
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    sequences = [[3, 4], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 20, 30, 40, 49]]
    ids, lengths = pad_batch(sequences)  # (3, 12)
    base = model(ids, lengths)
    assert torch.allclose(model(repad(ids, 40), lengths), base, atol=1e-6)
    for row, seq in enumerate(sequences):  # alone, each is padded only to max(len, 5)
        alone_ids, alone_len = pad_batch([seq])
        assert torch.allclose(model(alone_ids, alone_len)[0], base[row], atol=1e-6)
    # Without lengths, ids mode counts the non-padding ids itself.
    assert torch.allclose(model(repad(ids, 25)), base, atol=1e-6)


def test_padded_windows_never_win_the_max() -> None:
    # One filter of width 2 over 1-d vectors, weight -1 and bias 5, every real token = 1:
    # a real window gives -1 - 1 + 5 = 3; a window over (zeroed) padding would give 5 and win the max.
    model = PaperCNN(CNNConfig(vocab_size=0, embed_dim=1, num_labels=2, num_filters=1, kernel_sizes=(2,),
                               hidden=2, input_mode="vectors"))
    with torch.no_grad():
        model.convs[0].weight.fill_(-1.0)
        model.convs[0].bias.fill_(5.0)
    x = torch.ones(1, 10, 1)
    lengths = torch.tensor([4])
    assert model.features(x, lengths).item() == pytest.approx(3.0)
    # Positions beyond the length are ignored even when the caller's vectors there are not zero.
    x[:, 4:] = -100.0
    assert model.features(x, lengths).item() == pytest.approx(3.0)


def test_short_and_empty_sequences_stay_finite_and_invariant() -> None:
    torch.manual_seed(2)
    model = PaperCNN(CNNConfig(**SMALL)).eval()
    ids, lengths = pad_batch([[7, 8], []])  # lengths 2 and 0, both shorter than kernels 3-5
    out = model(ids, lengths)
    assert torch.isfinite(out).all()
    assert torch.allclose(model(repad(ids, 20), lengths), out, atol=1e-6)


def test_frozen_rows_stay_and_oov_rows_learn() -> None:
    torch.manual_seed(3)
    vectors = torch.randn(20, 8)
    known = torch.ones(20, dtype=torch.bool)
    known[[1, 7]] = False  # the unknown-word id and one corpus word missing from GloVe
    model = PaperCNN.from_pretrained(vectors, known, num_labels=3, num_filters=4, hidden=6, dropout=0.0)
    assert model.config.num_oov == 2
    assert model.oov_slot.tolist()[:8] == [0, 1, 0, 0, 0, 0, 0, 2]
    assert torch.equal(model.embed.weight[2:7], vectors[2:7])  # pretrained rows copied exactly
    assert model.embed.weight[0].abs().sum() == 0  # padding is zero even where `vectors` is not

    frozen_before = model.embed.weight.detach().clone()
    oov_before = model.oov_embed.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids, lengths = pad_batch([[1, 2, 3, 7], [4, 5, 6], [7, 8, 9, 10, 11]])
    loss = make_loss("wbce")(model(ids, lengths), torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    loss.backward()
    optimizer.step()
    assert torch.equal(model.embed.weight, frozen_before)  # GloVe rows untouched
    assert not torch.equal(model.oov_embed.weight[1:], oov_before[1:])  # OOV rows learned
    assert model.oov_embed.weight[0].abs().sum() == 0  # slot 0 stays the zero row


def test_state_dict_round_trip_through_config_dict() -> None:
    torch.manual_seed(4)
    known = np.ones(50, dtype=bool)
    known[[1, 9, 33]] = False
    model = PaperCNN.from_pretrained(np.random.default_rng(0).normal(size=(50, 8)), known, num_labels=7,
                                     num_filters=6, hidden=10).eval()
    again = PaperCNN.from_config_dict(json.loads(json.dumps(model.to_config_dict())))
    again.load_state_dict(model.state_dict())  # oov_slot travels as a buffer
    again.eval()
    ids, lengths = pad_batch([[1, 9, 33, 4], [5, 6]])
    assert torch.equal(again(ids, lengths), model(ids, lengths))
    with pytest.raises(ConfigError, match="num_oov"):
        PaperCNN(CNNConfig(**SMALL)).load_pretrained(np.zeros((50, 8)), known)


def test_tiny_training_run_learns() -> None:
    # Label 0 iff token 5 occurs, label 1 iff token 6 occurs: a few Adam steps must fit this.
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    sequences, targets = [], []
    for _ in range(64):
        seq = torch.randint(7, 50, (int(torch.randint(3, 15, (1,), generator=gen)),), generator=gen).tolist()
        y = [0.0, 0.0]
        for label, token in ((0, 5), (1, 6)):
            if torch.rand(1, generator=gen) < 0.4:
                seq[int(torch.randint(0, len(seq), (1,), generator=gen))] = token
                y[label] = 1.0
        sequences.append(seq)
        targets.append(y)
    ids, lengths = pad_batch(sequences)
    y_true = torch.tensor(targets)
    model = PaperCNN(CNNConfig(vocab_size=50, embed_dim=8, num_labels=2, num_filters=16, hidden=16,
                               trainable_embeddings=True, dropout=0.1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = make_loss("wbce", alpha=2.0)
    first = None
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(model(ids, lengths), y_true)
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.25 * first
    accuracy = ((model.predict_proba(ids, lengths) >= 0.5).float() == y_true).float().mean().item()
    assert accuracy > 0.95
