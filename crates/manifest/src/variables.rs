//! Application variables: each `[variables]` entry gets its value from a
//! provider (the caller's lookup, e.g. the environment) or its `default`, and
//! `{{ name }}` templates in component variables and `allowed_outbound_hosts`
//! are rendered with those values.
//!
//! As in Spin, a variable without a `default` is required: start-up fails if
//! no provider has a value for it.

use std::collections::BTreeMap;

use crate::model::{App, Component};

/// Every app variable's value, resolved once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VariableError {
    #[error("variable `{0}` is required and has no value")]
    Missing(String),
    #[error("{0}")]
    Template(String),
}

impl Variables {
    /// Resolves the app's variables: `lookup(name)` first, then the default.
    pub fn resolve(app: &App, lookup: impl Fn(&str) -> Option<String>) -> Result<Variables, VariableError> {
        let mut values = BTreeMap::new();
        for (name, variable) in &app.variables {
            let value = match (lookup(name), &variable.default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.clone(),
                (None, None) => return Err(VariableError::Missing(name.clone())),
            };
            values.insert(name.clone(), value);
        }
        Ok(Variables { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Replaces each `{{ name }}` in `template` by the variable's value.
    pub fn render(&self, template: &str) -> Result<String, VariableError> {
        let mut rendered = String::with_capacity(template.len());
        for part in template_parts(template).map_err(VariableError::Template)? {
            match part {
                TemplatePart::Literal(text) => rendered.push_str(text),
                TemplatePart::Variable(name) => {
                    let value = self.get(name).ok_or_else(|| {
                        VariableError::Template(format!("template `{template}` refers to undefined variable `{name}`"))
                    })?;
                    rendered.push_str(value);
                }
            }
        }
        Ok(rendered)
    }

    /// A component's variables, rendered: what the component sees through
    /// `wasi:config` and Spin's variables interfaces.
    pub fn for_component(&self, component: &Component) -> Result<BTreeMap<String, String>, VariableError> {
        component.variables.iter().map(|(name, template)| Ok((name.clone(), self.render(template)?))).collect()
    }

    /// A component's `allowed_outbound_hosts` with templates rendered.
    pub fn outbound_hosts(&self, component: &Component) -> Result<Vec<String>, VariableError> {
        component.allowed_outbound_hosts.iter().map(|entry| self.render(entry)).collect()
    }
}

/// A piece of a `{{ name }}` template.
#[derive(Debug, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Literal(&'a str),
    Variable(&'a str),
}

/// Splits a template into literal text and variable references.
pub fn template_parts(template: &str) -> Result<Vec<TemplatePart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(TemplatePart::Literal(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in template `{template}`"))?;
        let name = after[..end].trim();
        crate::check_variable_name(name)?;
        parts.push(TemplatePart::Variable(name));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(text: &str) -> App {
        crate::parse(text, std::path::Path::new("spin.toml"), std::path::Path::new("/app")).unwrap()
    }

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
token = { required = true, secret = true }
greeting = { default = "hello" }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
variables = { message = "{{ greeting }}, {{token}}!", fixed = "42" }
allowed_outbound_hosts = ["https://{{ greeting }}.example.com"]
"#;

    #[test]
    fn provider_values_beat_defaults_and_templates_render() {
        let app = app(MANIFEST);
        let lookup = |name: &str| (name == "token").then(|| "s3cret".to_owned());
        let variables = Variables::resolve(&app, lookup).unwrap();
        let component = variables.for_component(&app.components["c"]).unwrap();
        assert_eq!(component["message"], "hello, s3cret!");
        assert_eq!(component["fixed"], "42");
        assert_eq!(variables.outbound_hosts(&app.components["c"]).unwrap(), ["https://hello.example.com"]);

        let lookup = |name: &str| Some(format!("<{name}>"));
        let variables = Variables::resolve(&app, lookup).unwrap();
        assert_eq!(variables.for_component(&app.components["c"]).unwrap()["message"], "<greeting>, <token>!");
    }

    #[test]
    fn a_required_variable_without_a_value_is_named() {
        let error = Variables::resolve(&app(MANIFEST), |_| None).unwrap_err();
        assert_eq!(error, VariableError::Missing("token".into()));
        assert_eq!(error.to_string(), "variable `token` is required and has no value");
    }

    #[test]
    fn template_parts_split_literals_and_names() {
        assert_eq!(
            template_parts("a{{ b }}c{{d}}").unwrap(),
            [
                TemplatePart::Literal("a"),
                TemplatePart::Variable("b"),
                TemplatePart::Literal("c"),
                TemplatePart::Variable("d")
            ]
        );
        assert!(template_parts("{{ b").is_err());
        assert!(template_parts("{{ B }}").is_err());
    }
}
