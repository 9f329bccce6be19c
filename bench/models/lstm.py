"""LSTM mixer: one `torch.nn.LSTM` layer per block, hidden size = d_model (ARCHITECTURES.md §3).

The recurrence is natively discrete, so "parallel" mode is a single sequence call (sequential
inside, cuDNN on GPU) and step mode is the same call on one position with the carried (h, c).
"""

from __future__ import annotations

from torch import Tensor, nn

LSTMState = tuple[Tensor, Tensor]  # (h, c), each (1, B, d): layer-first even with batch_first=True


class LSTMMixer(nn.Module):
    """y_t = h_t of a single-layer LSTM over the block input. Parameters: 8d² + 8d, PyTorch default init.

    Gate rows of `lstm.weight_ih_l0`/`weight_hh_l0` are ordered i, f, g, o; with the default init the
    forget gate sits near 0.5, i.e. short memory at initialisation (§3.4).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.lstm = nn.LSTM(d_model, d_model, num_layers=1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, LSTMState]:
        """Run x (B, L, d); the state is (h, c) after position L-1."""
        y, state = self.lstm(x)
        return y, state

    def init_state(self, batch_size: int) -> LSTMState:
        zeros = self.lstm.weight_ih_l0.new_zeros(1, batch_size, self.d_model)
        return zeros, zeros.clone()

    def step(self, x_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One token x_t (B, d) -> y_t (B, d); nn.LSTM returns fresh (h, c) and leaves `state` untouched."""
        y, new_state = self.lstm(x_t[:, None], state)  # (B, d) -> (B, 1, d) -> (B, 1, d)
        return y[:, 0], new_state

    def state_size(self, seq_len: int) -> int:
        """h and c: 2d floats, independent of the sequence length."""
        return 2 * self.d_model

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: the input and the output sequence (2·L·d); nn.LSTM's
        fused kernel keeps its gate workspace inside that output buffer."""
        return 2 * seq_len * self.d_model
