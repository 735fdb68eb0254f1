//! The models, written against burn's `Backend` so one definition runs on ndarray and CUDA.
//!
//! Layers initialise themselves from the trial's own random stream (never burn's global
//! generator) and dropout masks come from the batch's stream, so a run is reproducible and a
//! resumed run continues exactly (see [`crate::rng`]).

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::augment::dropout_mask;
use crate::lstm_op::{LstmOps, tanh};

/// A fully connected layer, `x · W + b`.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    bound: f32,
    rng: &mut ChaCha8Rng,
    device: &B::Device,
) -> Tensor<B, D> {
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| rng.random_range(-bound..=bound))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl<B: Backend> Dense<B> {
    /// Weights and bias uniform in ±1/√input (PyTorch's default for linear layers).
    pub fn new(input: usize, output: usize, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let bound = 1.0 / (input as f32).sqrt();
        Dense {
            weight: Param::from_tensor(uniform([input, output], bound, rng, device)),
            bias: Param::from_tensor(uniform([output], bound, rng, device)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze::<2>()
    }

    /// Applies the layer to every step of `[batch, steps, input]`.
    pub fn forward_steps(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, steps, input] = x.dims();
        let output = self.weight.dims()[1];
        self.forward(x.reshape([batch * steps, input]))
            .reshape([batch, steps, output])
    }
}

/// Inverted dropout with a mask from `noise` (training) or none at all (`noise` is `None`).
pub fn dropout<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    p: f64,
    noise: &mut Option<ChaCha8Rng>,
) -> Tensor<B, D> {
    match noise {
        Some(rng) if p > 0.0 => {
            let shape = x.shape();
            let mask = dropout_mask(shape.num_elements(), p, rng);
            let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device());
            x * mask
        }
        _ => x,
    }
}

/// One LSTM layer. Gates are computed together, `[i f o g] = x·W_ih + h·W_hh + b`, one pair
/// of matrix products per step; the forget-gate bias starts at 1.
#[derive(Module, Debug)]
pub struct LstmLayer<B: Backend> {
    pub w_ih: Param<Tensor<B, 2>>,
    pub w_hh: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
    pub hidden: usize,
}

impl<B: Backend> LstmLayer<B> {
    pub fn new(input: usize, hidden: usize, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let bound = 1.0 / (hidden as f32).sqrt();
        let mut bias: Vec<f32> = (0..4 * hidden)
            .map(|_| rng.random_range(-bound..=bound))
            .collect();
        for value in &mut bias[hidden..2 * hidden] {
            *value += 1.0;
        }
        LstmLayer {
            w_ih: Param::from_tensor(uniform([input, 4 * hidden], bound, rng, device)),
            w_hh: Param::from_tensor(uniform([hidden, 4 * hidden], bound, rng, device)),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(bias, [4 * hidden]),
                device,
            )),
            hidden,
        }
    }
}

impl<B: LstmOps> LstmLayer<B> {
    /// Runs the layer over `[batch, steps, input]`, returning every step's hidden state
    /// `[batch, steps, hidden]` (see [`crate::lstm_op`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::lstm_layer(x, self.w_ih.val(), self.w_hh.val(), self.bias.val())
    }
}

/// Multi-head attention pooling over time: each head scores every step,
/// `s_h(t) = v_h · tanh(W h_t + b)`, softmax over time gives its weights, and the head's
/// summary is the weighted sum of hidden states; the heads' summaries are concatenated and
/// projected back to the hidden size.
#[derive(Module, Debug)]
pub struct AttentionPool<B: Backend> {
    pub key: Dense<B>,
    pub score: Dense<B>,
    pub merge: Dense<B>,
    pub heads: usize,
}

impl<B: Backend> AttentionPool<B> {
    pub fn new(hidden: usize, heads: usize, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        AttentionPool {
            key: Dense::new(hidden, hidden, rng, device),
            score: Dense::new(hidden, heads, rng, device),
            merge: Dense::new(heads * hidden, hidden, rng, device),
            heads,
        }
    }

    /// `[batch, steps, hidden]` → (`[batch, hidden]`, attention weights `[batch, steps, heads]`).
    pub fn forward(&self, states: Tensor<B, 3>) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let [batch, _, hidden] = states.dims();
        let scores = self
            .score
            .forward_steps(tanh(self.key.forward_steps(states.clone())));
        let weights = softmax(scores, 1);
        let pooled = weights
            .clone()
            .swap_dims(1, 2)
            .matmul(states)
            .reshape([batch, self.heads * hidden]);
        (tanh(self.merge.forward(pooled)), weights)
    }
}

/// The seeds' SimpleLSTM: stacked LSTM encoder, attention pooling, classifier head, and the
/// reconstruction head used by masked pre-training.
#[derive(Module, Debug)]
pub struct LstmClassifier<B: Backend> {
    pub layers: Vec<LstmLayer<B>>,
    pub pool: AttentionPool<B>,
    pub head: Dense<B>,
    pub reconstruct: Dense<B>,
    pub dropout: f64,
}

/// Shape of an [`LstmClassifier`] (kept in its checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LstmShape {
    pub features: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub classes: usize,
    pub dropout: f64,
}

impl<B: Backend> LstmClassifier<B> {
    pub fn new(shape: LstmShape, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let layers = (0..shape.layers)
            .map(|index| {
                let input = if index == 0 {
                    shape.features
                } else {
                    shape.hidden
                };
                LstmLayer::new(input, shape.hidden, rng, device)
            })
            .collect();
        LstmClassifier {
            layers,
            pool: AttentionPool::new(shape.hidden, shape.heads, rng, device),
            head: Dense::new(shape.hidden, shape.classes, rng, device),
            reconstruct: Dense::new(shape.hidden, shape.features, rng, device),
            dropout: shape.dropout,
        }
    }
}

impl<B: LstmOps> LstmClassifier<B> {
    /// Encodes `[batch, steps, features]` into per-step hidden states `[batch, steps, hidden]`.
    pub fn encode(&self, x: Tensor<B, 3>, noise: &mut Option<ChaCha8Rng>) -> Tensor<B, 3> {
        let mut sequence = x;
        for (index, layer) in self.layers.iter().enumerate() {
            if index > 0 {
                sequence = dropout(sequence, self.dropout, noise);
            }
            sequence = layer.forward(sequence);
        }
        sequence
    }

    /// Class logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 3>, noise: &mut Option<ChaCha8Rng>) -> Tensor<B, 2> {
        let states = self.encode(x, noise);
        let (pooled, _) = self.pool.forward(states);
        self.head.forward(dropout(pooled, self.dropout, noise))
    }

    /// Reconstruction of every step's features from the encoder, `[batch, steps, features]`.
    pub fn reconstruct(&self, x: Tensor<B, 3>, noise: &mut Option<ChaCha8Rng>) -> Tensor<B, 3> {
        let states = self.encode(x, noise);
        self.reconstruct.forward_steps(states)
    }
}

/// Shape of an [`MlpRegressor`] (kept in its checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpShape {
    pub features: usize,
    /// Units per hidden layer.
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f64,
}

/// A multi-layer perceptron regressor: `num_layers` ReLU layers and a linear output.
#[derive(Module, Debug)]
pub struct MlpRegressor<B: Backend> {
    pub hidden: Vec<Dense<B>>,
    pub output: Dense<B>,
    pub dropout: f64,
}

impl<B: Backend> MlpRegressor<B> {
    pub fn new(shape: MlpShape, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let hidden = (0..shape.layers)
            .map(|index| {
                let input = if index == 0 {
                    shape.features
                } else {
                    shape.hidden
                };
                Dense::new(input, shape.hidden, rng, device)
            })
            .collect();
        MlpRegressor {
            hidden,
            output: Dense::new(shape.hidden, 1, rng, device),
            dropout: shape.dropout,
        }
    }

    /// Predictions `[batch]`.
    pub fn forward(&self, x: Tensor<B, 2>, noise: &mut Option<ChaCha8Rng>) -> Tensor<B, 1> {
        let mut h = x;
        for layer in &self.hidden {
            h = dropout(relu(layer.forward(h)), self.dropout, noise);
        }
        let [batch, _] = h.dims();
        self.output.forward(h).reshape([batch])
    }
}
