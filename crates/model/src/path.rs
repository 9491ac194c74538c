//! Where a tensor sits in a module, as a dotted path (`entry_flow.0.sepconv1.bn.beta`), the
//! same for every architecture: the enum that holds the architecture ([`crate::Network`]) adds
//! no component, so paths (in checkpoints, optimizer state, weight maps) are the architecture's
//! own.

/// The path of the module a visitor or mapper is in; feed it every `enter_module` and
/// `exit_module`.
#[derive(Debug, Default, Clone)]
pub struct ModulePath {
    parts: Vec<String>,
    /// For every entered module, whether it added a part.
    added: Vec<bool>,
}

impl ModulePath {
    /// Enters the field `name` of a container of type `container_type` (`Struct:Xception`,
    /// `Vec`, `Enum:Network`); an enum's variant adds nothing.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        let add = !container_type.starts_with("Enum:");
        if add {
            self.parts.push(name.to_string());
        }
        self.added.push(add);
    }

    /// Leaves the module entered last.
    pub fn exit(&mut self) {
        if self.added.pop() == Some(true) {
            self.parts.pop();
        }
    }

    /// The dotted path.
    pub fn current(&self) -> String {
        self.parts.join(".")
    }

    /// The innermost part (the field name of a tensor being visited).
    pub fn last(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }
}
