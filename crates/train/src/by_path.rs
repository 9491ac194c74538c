//! A module's float tensors (parameters and BatchNorm running statistics) addressed by their
//! path in the module, `entry_flow.0.sepconv1.bn.running_mean`: paths rather than parameter
//! ids, since a model read from a checkpoint, or a replica, gets fresh ids.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use xception_model::path::ModulePath;

/// Every float tensor of `module` by path: its current value, detached, without autodiff,
/// flattened.
pub fn floats<M: Module>(module: &M) -> HashMap<String, Tensor<1>> {
    let mut collect = Collect::default();
    module.visit(&mut collect);
    collect.values
}

/// `module` with every float tensor replaced by `f(path, value)`, where `value` is the
/// tensor flattened and without autodiff, and the result (flat) takes back its shape, its
/// autodiff and its gradient requirement.
pub fn map_floats<M: Module>(module: M, f: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    module.map(&mut MapFloats {
        path: ModulePath::default(),
        f,
    })
}

#[derive(Default)]
struct Collect {
    path: ModulePath,
    values: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().detach().without_autodiff();
        let elements = value.shape().num_elements();
        self.values
            .insert(self.path.current(), value.reshape([elements]));
    }
}

struct MapFloats<F> {
    path: ModulePath,
    f: F,
}

impl<F: FnMut(&str, Tensor<1>) -> Tensor<1>> ModuleMapper for MapFloats<F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.current();
        param.map(|tensor| {
            let dims = tensor.dims();
            let (autodiff, require_grad) = (tensor.is_autodiff(), tensor.is_require_grad());
            let flat = tensor
                .without_autodiff()
                .reshape([dims.iter().product::<usize>()]);
            let value = (self.f)(&path, flat).reshape(dims);
            let value = if autodiff { value.autodiff() } else { value };
            if require_grad {
                value.require_grad()
            } else {
                value
            }
        })
    }
}
