//! Config parsing: any text, with any `${VAR}`s, is a config or a list of errors that
//! name the file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("v{name}"));
    if let Err(errors) = cloakroom::Config::from_str_with_env(
        std::path::Path::new("/nonexistent/proxy.toml"),
        text,
        &env,
    ) {
        assert!(!errors.0.is_empty());
        for error in &errors.0 {
            let _ = error.to_string();
        }
    }
});
