//! `Sequential`: modules applied in order, named `0`, `1`, ... (or by the given names).

use super::{join, Module, Visitor};
use crate::{Result, Tensor};

/// Applies its children in order. Children are named by position unless added by name.
#[derive(Debug, Default)]
pub struct Sequential {
    children: Vec<(String, Box<dyn Module>)>,
}

impl Sequential {
    /// An empty container.
    pub fn new() -> Self {
        Sequential::default()
    }
    /// Appends a child named by its position.
    pub fn push(mut self, m: impl Module + 'static) -> Self {
        let name = self.children.len().to_string();
        self.children.push((name, Box::new(m)));
        self
    }
    /// Appends a child with an explicit name.
    pub fn push_named(mut self, name: &str, m: impl Module + 'static) -> Self {
        self.children.push((name.to_string(), Box::new(m)));
        self
    }
    /// Number of children.
    pub fn len(&self) -> usize {
        self.children.len()
    }
    /// True when there are no children.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.children
            .iter()
            .try_fold(x.clone(), |h, (_, m)| m.forward(&h))
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        for (name, m) in &self.children {
            m.visit_parameters(&join(prefix, name), f);
        }
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        for (name, m) in &self.children {
            m.visit_buffers(&join(prefix, name), f);
        }
    }
    fn set_training(&mut self, on: bool) {
        self.children
            .iter_mut()
            .for_each(|(_, m)| m.set_training(on));
    }
    fn is_training(&self) -> bool {
        self.children.iter().all(|(_, m)| m.is_training())
    }
    fn to_memory_format(&mut self, format: crate::MemoryFormat) {
        self.children
            .iter_mut()
            .for_each(|(_, m)| m.to_memory_format(format));
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut super::BatchNorm2d)) {
        self.children
            .iter_mut()
            .for_each(|(_, m)| m.for_each_batch_norm(f));
    }
}
