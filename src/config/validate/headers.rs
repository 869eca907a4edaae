//! Validation of the header names: `[inject]` (identity headers, each may be turned
//! off with "") and `[control]` (the upstream's control headers, always on), and the rule
//! that no name serves two purposes. No IO.
//!
//! Part of the `Validator` in `validate.rs`, split out by section.

use http::HeaderName;

use super::super::raw::{RawControl, RawInject};
use super::super::{ControlConfig, InjectConfig};
use super::checks::header_name;
use super::Validator;

impl Validator<'_> {
    pub(super) fn header(&mut self, key: &str, value: &str, example: &str) -> Option<HeaderName> {
        self.check(key, header_name(value, example))
    }

    pub(super) fn inject(&mut self, raw: &RawInject) -> Option<InjectConfig> {
        let mut field = |key: &str, value: &str, example: &str| -> Option<Option<HeaderName>> {
            if value.is_empty() {
                Some(None)
            } else {
                self.header(key, value, example).map(Some)
            }
        };
        let id = field("inject.id", &raw.id, "X-Session-Id");
        let user = field("inject.user", &raw.user, "X-Session-User");
        let roles = field("inject.roles", &raw.roles, "X-Session-Roles");
        let data = field("inject.data", &raw.data, "X-Session-Data");
        let assertion = field("inject.assertion", &raw.assertion, "X-Session-Assertion");
        Some(InjectConfig {
            id: id?,
            user: user?,
            roles: roles?,
            data: data?,
            assertion: assertion?,
        })
    }

    pub(super) fn control(&mut self, raw: &RawControl) -> Option<ControlConfig> {
        let mut field = |key: &str, value: &str, example: &str| {
            if value.is_empty() {
                self.error(
                    key,
                    format!("must not be empty: control headers cannot be turned off; use e.g. \"{example}\""),
                );
                None
            } else {
                self.header(key, value, example)
            }
        };
        let set_user = field("control.set_user", &raw.set_user, "X-Session-Set-User");
        let set_roles = field("control.set_roles", &raw.set_roles, "X-Session-Set-Roles");
        let set_data = field("control.set_data", &raw.set_data, "X-Session-Set-Data");
        let logout = field("control.logout", &raw.logout, "X-Session-Logout");
        Some(ControlConfig {
            set_user: set_user?,
            set_roles: set_roles?,
            set_data: set_data?,
            logout: logout?,
        })
    }

    /// No header name may serve two purposes.
    pub(super) fn unique_headers(&mut self, inject: &InjectConfig, control: &ControlConfig) {
        let named: [(&str, Option<&HeaderName>); 9] = [
            ("inject.id", inject.id.as_ref()),
            ("inject.user", inject.user.as_ref()),
            ("inject.roles", inject.roles.as_ref()),
            ("inject.data", inject.data.as_ref()),
            ("inject.assertion", inject.assertion.as_ref()),
            ("control.set_user", Some(&control.set_user)),
            ("control.set_roles", Some(&control.set_roles)),
            ("control.set_data", Some(&control.set_data)),
            ("control.logout", Some(&control.logout)),
        ];
        for (i, (key, name)) in named.iter().enumerate() {
            let Some(name) = name else { continue };
            let earlier = named[..i].iter().find(|(_, other)| *other == Some(*name));
            if let Some((earlier_key, _)) = earlier {
                // Point at the one the operator wrote: a default clashing with a written
                // name is fixed by changing the written one.
                let (at, other) = if self.locator.exists(key) || !self.locator.exists(earlier_key) {
                    (*key, *earlier_key)
                } else {
                    (*earlier_key, *key)
                };
                self.error(
                    at,
                    format!("\"{name}\" is also {other}; each header name may have one use"),
                );
            }
        }
    }
}
