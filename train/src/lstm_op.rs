//! The LSTM recurrence as one operation per layer.
//!
//! Written with burn's tensor operations, a layer of `T` steps is some twenty graph nodes per
//! step, each a separate pass over memory with its own allocation, plus as many again in the
//! backward pass; on the CPU that bookkeeping, not arithmetic, is where the time goes. On
//! burn's ndarray backend [`LstmOps::lstm_layer`] is therefore one fused operation: the input
//! projection of every step in one matrix product, the recurrence with its gate arithmetic in
//! a single loop per step, and a hand-written backward pass (backpropagation through time)
//! registered with burn's autodiff as a custom node. Other backends (CUDA) use the
//! composition of tensor operations, [`lstm_layer_composite`], which burn differentiates.
//!
//! Both compute, per step, `[i f o g] = x·W_ih + h·W_hh + b`, `i f o = σ(·)`, `g = tanh(·)`,
//! `c = f∘c + i∘g`, `h = o∘tanh(c)`, from zero initial state; a test checks that their
//! outputs and gradients agree.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ndarray::{NdArrayDevice, NdArrayTensor};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use ndarray::{Array2, ArrayView2, Ix2, Ix3, linalg::general_mat_mul};

/// Backends the LSTM layer runs on.
pub trait LstmOps: Backend {
    /// One LSTM layer over `x: [batch, steps, input]` with fused gate weights
    /// `w_ih: [input, 4·hidden]`, `w_hh: [hidden, 4·hidden]`, `bias: [4·hidden]` (gate order
    /// i, f, o, g); returns every step's hidden state, `[batch, steps, hidden]`.
    fn lstm_layer(
        x: Tensor<Self, 3>,
        w_ih: Tensor<Self, 2>,
        w_hh: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        lstm_layer_composite(x, w_ih, w_hh, bias)
    }
}

/// The layer as burn tensor operations, one pair of matrix products per step. Steps are kept
/// as separate tensors: slicing one large tensor per step would make the backward pass
/// quadratic in the sequence length.
pub fn lstm_layer_composite<B: Backend>(
    x: Tensor<B, 3>,
    w_ih: Tensor<B, 2>,
    w_hh: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let [batch, steps, input] = x.dims();
    let hidden = w_hh.dims()[0];
    let device = x.device();
    let bias = bias.unsqueeze::<2>();
    let mut h = Tensor::<B, 2>::zeros([batch, hidden], &device);
    let mut c = Tensor::<B, 2>::zeros([batch, hidden], &device);
    let mut outputs = Vec::with_capacity(steps);
    for step in 0..steps {
        let x_t = x.clone().narrow(1, step, 1).reshape([batch, input]);
        let gates = x_t.matmul(w_ih.clone()) + h.matmul(w_hh.clone()) + bias.clone();
        let squashed = sigmoid(gates.clone().narrow(1, 0, 3 * hidden));
        let input_gate = squashed.clone().narrow(1, 0, hidden);
        let forget_gate = squashed.clone().narrow(1, hidden, hidden);
        let output_gate = squashed.narrow(1, 2 * hidden, hidden);
        let candidate = tanh(gates.narrow(1, 3 * hidden, hidden));
        c = forget_gate * c + input_gate * candidate;
        h = output_gate * tanh(c.clone());
        outputs.push(h.clone());
    }
    Tensor::stack(outputs, 1)
}

/// `1 / (1 + e^-x)` from single-precision `exp`: burn's own sigmoid takes an exp, a log and
/// another exp per element, and again in the backward pass.
pub fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.neg().exp().add_scalar(1.0).recip()
}

/// `1 - 2 / (e^{2x} + 1)` from single-precision `exp` (burn's ndarray tanh works in double
/// precision). Saturates to ±1 without NaN when `exp` overflows.
pub fn tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.mul_scalar(2.0)
        .exp()
        .add_scalar(1.0)
        .recip()
        .mul_scalar(-2.0)
        .add_scalar(1.0)
}

#[cfg(feature = "cuda")]
impl LstmOps for burn::backend::Cuda {}

#[cfg(feature = "cuda")]
impl<C: CheckpointStrategy> LstmOps for Autodiff<burn::backend::Cuda, C> {}

/// Inference on the CPU: the fused forward pass.
impl LstmOps for NdArray {
    fn lstm_layer(
        x: Tensor<Self, 3>,
        w_ih: Tensor<Self, 2>,
        w_hh: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        let dims = Dims::of(&x.dims(), &w_hh.dims());
        let [x, w_ih, w_hh, bias] = [
            x.into_primitive().tensor(),
            w_ih.into_primitive().tensor(),
            w_hh.into_primitive().tensor(),
            bias.into_primitive().tensor(),
        ]
        .map(|tensor| inner_host(&tensor));
        let forward = forward(dims, &x, &w_ih, &w_hh, &bias);
        let states = inner_tensor(&forward.states, dims.states());
        Tensor::from_primitive(TensorPrimitive::Float(states))
    }
}

/// Training on the CPU: the fused forward pass, and a custom backward node.
impl<C: CheckpointStrategy> LstmOps for Autodiff<NdArray, C> {
    fn lstm_layer(
        x: Tensor<Self, 3>,
        w_ih: Tensor<Self, 2>,
        w_hh: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        let dims = Dims::of(&x.dims(), &w_hh.dims());
        let [x, w_ih, w_hh, bias] = [
            x.into_primitive().tensor(),
            w_ih.into_primitive().tensor(),
            w_hh.into_primitive().tensor(),
            bias.into_primitive().tensor(),
        ];
        let nodes = [x.node, w_ih.node, w_hh.node, bias.node];
        let [x, w_ih, w_hh, bias] =
            [x.primitive, w_ih.primitive, w_hh.primitive, bias.primitive].map(|p| inner_host(&p));
        let forward = forward(dims, &x, &w_ih, &w_hh, &bias);
        let states = inner_tensor(&forward.states, dims.states());
        let output = match LstmBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let saved = Saved {
                    dims,
                    x,
                    w_ih,
                    w_hh,
                    forward,
                };
                prep.finish(Arc::new(saved), states)
            }
            OpsKind::UnTracked(prep) => prep.finish(states),
        };
        Tensor::from_primitive(TensorPrimitive::Float(output))
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    input: usize,
    hidden: usize,
}

impl Dims {
    fn of(x: &[usize; 3], w_hh: &[usize; 2]) -> Dims {
        Dims {
            batch: x[0],
            steps: x[1],
            input: x[2],
            hidden: w_hh[0],
        }
    }

    fn states(&self) -> [usize; 3] {
        [self.batch, self.steps, self.hidden]
    }
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug)]
struct Forward {
    /// Activated gates `[steps][batch][4·hidden]` (i, f, o = σ, g = tanh).
    gates: Vec<f32>,
    /// Cell states `[steps][batch][hidden]`.
    cells: Vec<f32>,
    /// `tanh` of the cell states, same layout.
    cells_tanh: Vec<f32>,
    /// Hidden states, the output: `[batch][steps][hidden]`.
    states: Vec<f32>,
}

#[derive(Debug)]
struct Saved {
    dims: Dims,
    x: Vec<f32>,
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    forward: Forward,
}

fn host(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data")
}

/// The values of an ndarray tensor in row-major order. Gradients arriving from transposed
/// products are not contiguous; they are copied with a fixed-rank view (burn's own
/// `into_data` walks dynamic-rank indices element by element).
fn inner_host(tensor: &FloatTensor<NdArray>) -> Vec<f32> {
    if let NdArrayTensor::F32(storage) = tensor {
        let view = storage.view();
        if let Some(values) = view.as_slice() {
            return values.to_vec();
        }
        if let Ok(view) = view.view().into_dimensionality::<Ix3>() {
            return view.as_standard_layout().iter().copied().collect();
        }
        if let Ok(view) = view.into_dimensionality::<Ix2>() {
            return view.as_standard_layout().iter().copied().collect();
        }
    }
    host(Tensor::<NdArray, 1>::from_primitive(TensorPrimitive::Float(tensor.clone())).into_data())
}

fn inner_tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> FloatTensor<NdArray> {
    let data = TensorData::new(values.to_vec(), shape);
    Tensor::<NdArray, D>::from_data(data, &NdArrayDevice::Cpu)
        .into_primitive()
        .tensor()
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `tanh` through one `exp` (libm's `tanhf` goes through `expm1f` and costs twice as much);
/// ±1 without NaN when `exp` overflows.
fn squash(x: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * x).exp() + 1.0)
}

fn forward(dims: Dims, x: &[f32], w_ih: &[f32], w_hh: &[f32], bias: &[f32]) -> Forward {
    let Dims {
        batch,
        steps,
        input,
        hidden,
    } = dims;
    let width = 4 * hidden;
    // Every step's input projection at once: row `b·steps + t`.
    let x2 = ArrayView2::from_shape((batch * steps, input), x).expect("x shape");
    let w_ih = ArrayView2::from_shape((input, width), w_ih).expect("w_ih shape");
    let w_hh = ArrayView2::from_shape((hidden, width), w_hh).expect("w_hh shape");
    let projected = x2.dot(&w_ih);

    let mut out = Forward {
        gates: vec![0.0; steps * batch * width],
        cells: vec![0.0; steps * batch * hidden],
        cells_tanh: vec![0.0; steps * batch * hidden],
        states: vec![0.0; batch * steps * hidden],
    };
    let projected = projected.as_standard_layout();
    let projected = projected.as_slice().expect("standard layout");
    let mut h = Array2::<f32>::zeros((batch, hidden));
    let mut recurrent = Array2::<f32>::zeros((batch, width));
    let zeros = vec![0.0f32; hidden];
    for t in 0..steps {
        general_mat_mul(1.0, &h, &w_hh, 0.0, &mut recurrent);
        let recurrent = recurrent.as_slice().expect("standard layout");
        let h = h.as_slice_mut().expect("standard layout");
        for b in 0..batch {
            let at = (t * batch + b) * hidden;
            let gates = &mut out.gates[(t * batch + b) * width..][..width];
            let inputs = projected[(b * steps + t) * width..][..width]
                .iter()
                .zip(&recurrent[b * width..][..width])
                .zip(bias);
            for (j, ((x, r), bias)) in inputs.enumerate() {
                let a = x + r + bias;
                gates[j] = if j < 3 * hidden {
                    logistic(a)
                } else {
                    squash(a)
                };
            }
            let (i, rest) = gates.split_at(hidden);
            let (f, rest) = rest.split_at(hidden);
            let (o, g) = rest.split_at(hidden);
            let (done, now) = out.cells.split_at_mut(at);
            let previous = if t == 0 {
                &zeros[..]
            } else {
                &done[at - batch * hidden..][..hidden]
            };
            let cells = &mut now[..hidden];
            let cells_tanh = &mut out.cells_tanh[at..][..hidden];
            let states = &mut out.states[(b * steps + t) * hidden..][..hidden];
            let h = &mut h[b * hidden..][..hidden];
            for k in 0..hidden {
                let c = f[k] * previous[k] + i[k] * g[k];
                let squashed = squash(c);
                cells[k] = c;
                cells_tanh[k] = squashed;
                states[k] = o[k] * squashed;
                h[k] = states[k];
            }
        }
    }
    out
}

/// Gradients of the layer's inputs from the gradient of its output `[batch, steps, hidden]`.
struct Grads {
    x: Vec<f32>,
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    bias: Vec<f32>,
}

fn backward(saved: &Saved, d_states: &[f32]) -> Grads {
    let Dims {
        batch,
        steps,
        input,
        hidden,
    } = saved.dims;
    let width = 4 * hidden;
    let forward = &saved.forward;
    let w_ih = ArrayView2::from_shape((input, width), &saved.w_ih).expect("w_ih shape");
    let w_hh = ArrayView2::from_shape((hidden, width), &saved.w_hh).expect("w_hh shape");
    // Gradients of the gate pre-activations, row `b·steps + t` like the input projection.
    let mut d_gates = Array2::<f32>::zeros((batch * steps, width));
    let mut d_step = Array2::<f32>::zeros((batch, width));
    let mut d_h = Array2::<f32>::zeros((batch, hidden));
    let mut d_c = vec![0.0f32; batch * hidden];
    for t in (0..steps).rev() {
        for b in 0..batch {
            let gates = &forward.gates[(t * batch + b) * width..][..width];
            for k in 0..hidden {
                let (i, f, o, g) = (
                    gates[k],
                    gates[hidden + k],
                    gates[2 * hidden + k],
                    gates[3 * hidden + k],
                );
                let cell = (t * batch + b) * hidden + k;
                let squashed = forward.cells_tanh[cell];
                let previous = if t == 0 {
                    0.0
                } else {
                    forward.cells[cell - batch * hidden]
                };
                let dh = d_states[(b * steps + t) * hidden + k] + d_h[[b, k]];
                let d_o = dh * squashed;
                let dc = dh * o * (1.0 - squashed * squashed) + d_c[b * hidden + k];
                d_c[b * hidden + k] = dc * f;
                d_step[[b, k]] = dc * g * i * (1.0 - i);
                d_step[[b, hidden + k]] = dc * previous * f * (1.0 - f);
                d_step[[b, 2 * hidden + k]] = d_o * o * (1.0 - o);
                d_step[[b, 3 * hidden + k]] = dc * i * (1.0 - g * g);
            }
            d_gates.row_mut(b * steps + t).assign(&d_step.row(b));
        }
        // The previous state's gradient through the recurrent weights.
        general_mat_mul(1.0, &d_step, &w_hh.t(), 0.0, &mut d_h);
    }
    // Weight gradients over all steps at once.
    let x2 = ArrayView2::from_shape((batch * steps, input), &saved.x).expect("x shape");
    let mut previous_states = Array2::<f32>::zeros((batch * steps, hidden));
    for b in 0..batch {
        for t in 1..steps {
            let from = &forward.states[(b * steps + t - 1) * hidden..][..hidden];
            previous_states
                .row_mut(b * steps + t)
                .assign(&ndarray::ArrayView1::from(from));
        }
    }
    let d_w_ih = x2.t().dot(&d_gates);
    let d_w_hh = previous_states.t().dot(&d_gates);
    let d_bias = d_gates.sum_axis(ndarray::Axis(0));
    let d_x = d_gates.dot(&w_ih.t());
    Grads {
        x: standard(d_x.view()),
        w_ih: standard(d_w_ih.view()),
        w_hh: standard(d_w_hh.view()),
        bias: d_bias.to_vec(),
    }
}

fn standard(view: ArrayView2<'_, f32>) -> Vec<f32> {
    view.as_standard_layout().iter().copied().collect()
}

#[derive(Debug)]
struct LstmBackward;

impl Backward<NdArray, 4> for LstmBackward {
    type State = Arc<Saved>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x, w_ih, w_hh, bias] = ops.parents;
        let d_states = inner_host(&grads.consume::<NdArray>(&ops.node));
        let saved = &ops.state;
        let dims = saved.dims;
        let computed = backward(saved, &d_states);
        let width = 4 * dims.hidden;
        if let Some(node) = x {
            let shape = [dims.batch, dims.steps, dims.input];
            grads.register::<NdArray>(node.id, inner_tensor(&computed.x, shape));
        }
        if let Some(node) = w_ih {
            let shape = [dims.input, width];
            grads.register::<NdArray>(node.id, inner_tensor(&computed.w_ih, shape));
        }
        if let Some(node) = w_hh {
            let shape = [dims.hidden, width];
            grads.register::<NdArray>(node.id, inner_tensor(&computed.w_hh, shape));
        }
        if let Some(node) = bias {
            grads.register::<NdArray>(node.id, inner_tensor(&computed.bias, [width]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type Train = Autodiff<NdArray>;

    /// The fused layer and the composite one agree on the output and on every gradient,
    /// for two stacked layers (so the input gradient is exercised too).
    #[test]
    fn the_fused_layer_matches_the_composite_one_forward_and_backward() {
        let device = NdArrayDevice::Cpu;
        let (batch, steps, input, hidden) = (3, 7, 5, 4);
        let random = |shape: Vec<usize>, seed: u64| -> Vec<f32> {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-0.8..0.8))
                .collect()
        };
        let x = random(vec![batch, steps, input], 1);
        let weights = [
            (random(vec![input, 4 * hidden], 2), vec![input, 4 * hidden]),
            (
                random(vec![hidden, 4 * hidden], 3),
                vec![hidden, 4 * hidden],
            ),
            (random(vec![4 * hidden], 4), vec![4 * hidden]),
            (
                random(vec![hidden, 4 * hidden], 5),
                vec![hidden, 4 * hidden],
            ),
            (
                random(vec![hidden, 4 * hidden], 6),
                vec![hidden, 4 * hidden],
            ),
            (random(vec![4 * hidden], 7), vec![4 * hidden]),
        ];
        let readout = random(vec![batch, steps, hidden], 8);
        let run = |fused: bool| {
            let x = Tensor::<Train, 3>::from_data(
                TensorData::new(x.clone(), [batch, steps, input]),
                &device,
            )
            .require_grad();
            let params: Vec<Tensor<Train, 1>> = weights
                .iter()
                .map(|(values, _)| {
                    Tensor::<Train, 1>::from_data(
                        TensorData::new(values.clone(), [values.len()]),
                        &device,
                    )
                    .require_grad()
                })
                .collect();
            let matrix = |index: usize| {
                let shape = &weights[index].1;
                params[index].clone().reshape([shape[0], shape[1]])
            };
            let layer = |x, a: usize| {
                if fused {
                    Train::lstm_layer(x, matrix(a), matrix(a + 1), params[a + 2].clone())
                } else {
                    lstm_layer_composite(x, matrix(a), matrix(a + 1), params[a + 2].clone())
                }
            };
            let states = layer(layer(x.clone(), 0), 3);
            let readout = Tensor::<Train, 3>::from_data(
                TensorData::new(readout.clone(), [batch, steps, hidden]),
                &device,
            );
            let loss = (states.clone() * readout).sum();
            let grads = loss.backward();
            let mut values = vec![host(states.into_data())];
            values.push(host(x.grad(&grads).expect("x grad").into_data()));
            for param in &params {
                values.push(host(param.grad(&grads).expect("grad").into_data()));
            }
            values
        };
        let (fused, composite) = (run(true), run(false));
        let names = [
            "states", "d_x", "d_w_ih1", "d_w_hh1", "d_b1", "d_w_ih2", "d_w_hh2", "d_b2",
        ];
        for ((name, fused), composite) in names.iter().zip(&fused).zip(&composite) {
            assert_eq!(fused.len(), composite.len(), "{name}");
            for (a, b) in fused.iter().zip(composite) {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                    "{name}: fused {a} vs composite {b}"
                );
            }
        }
    }
}
