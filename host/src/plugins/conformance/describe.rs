//! The self-description check: the driver's name, description,
//! `describe` answer and create options.

use super::outcome::{During, Failure, Outcome, Verdict};
use super::session::Session;
use crate::block::options;
use crate::plugins::Driver;
use qimg_driver_api::schema::{CreateOption, DriverDescription};
use std::collections::{BTreeMap, HashSet};

impl Session {
    /// Name, description, `describe` and create options.
    pub(super) fn describes_itself(&self) -> Outcome {
        let d = &self.driver;
        if d.name != self.format {
            return Err(Failure::Rule(format!(
                "the manifest's '{}' driver calls itself '{}'",
                self.format, d.name
            )));
        }
        if d.description.description.trim().is_empty() {
            return Err(Failure::Rule("its description is empty".into()));
        }
        if d.abi_minor >= 3 {
            let text: String = d.api.describe().into_result().during("describe")?.into();
            let again: DriverDescription = serde_json::from_str(&text)
                .map_err(|e| Failure::Rule(format!("describe answers bad JSON: {e}")))?;
            if again != d.description {
                return Err(Failure::Rule(
                    "describe answers differently on a second call".into(),
                ));
            }
        }
        let text = d.api.create_options();
        let listed: Vec<CreateOption> = serde_json::from_str(text.as_str())
            .map_err(|e| Failure::Rule(format!("create_options answers bad JSON: {e}")))?;
        if listed != d.description.create_options {
            return Err(Failure::Rule(
                "create_options and describe list different options".into(),
            ));
        }
        check_create_options(d)?;
        Ok(Verdict::Pass)
    }
}

/// Checks each create option: a name, not listed twice, and a default that
/// `-o` accepts.
fn check_create_options(driver: &Driver) -> Result<(), Failure> {
    let schema = options::schema(driver, true);
    let mut seen = HashSet::new();
    for option in driver.create_options() {
        if option.name.is_empty() || option.name.contains([',', '=']) {
            return Err(Failure::Rule(format!(
                "create option '{}' has an unusable name",
                option.name
            )));
        }
        if !seen.insert(option.name.as_str()) {
            return Err(Failure::Rule(format!(
                "create option '{}' is listed twice",
                option.name
            )));
        }
        if let Some(default) = &option.default {
            let given = BTreeMap::from([(option.name.clone(), default.clone())]);
            options::validate(&schema, &given).map_err(|e| {
                Failure::Rule(format!(
                    "create option '{}' has a default -o refuses: {e}",
                    option.name
                ))
            })?;
        }
    }
    Ok(())
}
