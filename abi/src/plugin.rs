//! The [`Plugin`] trait and the glue [`crate::export_plugin!`] generates.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString, RVec};
use serde::de::DeserializeOwned;

use crate::error::{codes, Error};
use crate::ffi::{
    AbiError, Capability, HostApiBox, Manifest, PluginInstance, PluginInstanceBox, PluginInstance_TO,
    ABI_VERSION,
};
use crate::host::Host;

/// What a plugin declares about itself before it is activated.
///
/// ```
/// # use dispatch_abi::PluginManifest;
/// let m = PluginManifest::new("greeter", "0.1.0")
///     .description("Says hello")
///     .depends_on("surfaces")
///     .provides("service", "greeter.greet");
/// assert_eq!(m.id(), "greeter");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginManifest {
    id: String,
    version: String,
    description: String,
    depends_on: Vec<String>,
    provides: Vec<(String, String)>,
}

impl PluginManifest {
    /// A manifest with an id and a version (use `env!("CARGO_PKG_VERSION")`).
    pub fn new(id: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            version: version.into(),
            description: String::new(),
            depends_on: Vec::new(),
            provides: Vec::new(),
        }
    }
    /// One line for operators.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }
    /// A plugin that must be active first.
    pub fn depends_on(mut self, id: impl Into<String>) -> Self {
        self.depends_on.push(id.into());
        self
    }
    /// Declare a contribution (`kind` is e.g. `service`, `event`, `hook`, `tool`).
    pub fn provides(mut self, kind: impl Into<String>, name: impl Into<String>) -> Self {
        self.provides.push((kind.into(), name.into()));
        self
    }
    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The FFI form.
    pub fn to_abi(&self) -> Manifest {
        Manifest {
            id: self.id.as_str().into(),
            version: self.version.as_str().into(),
            abi_version: ABI_VERSION,
            description: self.description.as_str().into(),
            depends_on: self.depends_on.iter().map(|d| RString::from(d.as_str())).collect::<RVec<_>>(),
            provides: self
                .provides
                .iter()
                .map(|(k, n)| Capability { kind: k.as_str().into(), name: n.as_str().into() })
                .collect(),
        }
    }
}

/// What `activate` receives: the host handle and the plugin's config.
#[derive(Debug)]
pub struct Context {
    host: Host,
    config: serde_json::Value,
}

impl Context {
    /// Build a context (the export glue does this; tests may too).
    pub fn new(host: Host, config: serde_json::Value) -> Self {
        Self { host, config }
    }
    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }
    /// The raw `[plugin.config]` table (`null` when absent).
    pub fn raw_config(&self) -> &serde_json::Value {
        &self.config
    }
    /// The `[plugin.config]` table parsed into the plugin's own config type.
    /// An absent table parses as `{}` so `#[serde(default)]` configs work.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let value = if self.config.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            self.config.clone()
        };
        serde_json::from_value(value)
            .map_err(|e| Error::new(codes::INVALID_CONFIG, format!("invalid [plugin.config]: {e}")))
    }
}

/// A Dispatch plugin.
///
/// # Lifecycle
///
/// 1. The host loads the library and reads [`Plugin::manifest`] — before
///    anything is activated, and possibly without activating at all
///    (`dispatch plugins` on a broken configuration).
/// 2. Once every plugin in the manifest's `depends_on` is active, the host
///    calls [`Plugin::activate`] on a blocking thread. Register services,
///    subscriptions and hooks there; start a runtime if you do async I/O.
///    An `Err` (or a panic) marks the plugin `failed` and its dependents
///    `skipped`; the rest of the host carries on.
/// 3. On shutdown the host calls [`Plugin::deactivate`] in reverse
///    activation order, each with a deadline.
///
/// The library is never unloaded.
pub trait Plugin: Sized + Send + 'static {
    /// Who the plugin is. Must not have side effects.
    fn manifest() -> PluginManifest;

    /// Start the plugin.
    fn activate(ctx: Context) -> Result<Self, Error>;

    /// Stop the plugin. The default does nothing.
    fn deactivate(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

struct Instance<P>(P);

impl<P: Plugin> PluginInstance for Instance<P> {
    fn deactivate(&mut self) -> RResult<(), AbiError> {
        let _scope = crate::scope::enter();
        match catch_unwind(AssertUnwindSafe(|| self.0.deactivate())) {
            Ok(r) => r.map_err(AbiError::from).into(),
            Err(panic) => RResult::RErr(Error::from_panic(panic).into()),
        }
    }
}

/// Glue behind [`crate::export_plugin!`]: the manifest entry point.
#[doc(hidden)]
pub fn manifest_entry<P: Plugin>() -> RResult<Manifest, AbiError> {
    let _scope = crate::scope::enter();
    match catch_unwind(P::manifest) {
        Ok(m) => RResult::ROk(m.to_abi()),
        Err(panic) => RResult::RErr(Error::from_panic(panic).into()),
    }
}

/// Glue behind [`crate::export_plugin!`]: the activate entry point.
#[doc(hidden)]
pub fn activate_entry<P: Plugin>(host: HostApiBox, config: RString) -> RResult<PluginInstanceBox, AbiError> {
    let _scope = crate::scope::enter();
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        crate::logging::install(&host);
        let config: serde_json::Value = if config.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&config)
                .map_err(|e| Error::new(codes::INVALID_CONFIG, format!("config is not JSON: {e}")))?
        };
        P::activate(Context::new(Host::from_abi(host), config))
    }));
    match outcome {
        Ok(Ok(plugin)) => RResult::ROk(PluginInstance_TO::from_value(Instance(plugin), TD_Opaque)),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(panic) => RResult::RErr(Error::from_panic(panic).into()),
    }
}

/// Export a [`Plugin`] as this library's root module.
///
/// Put it once in the crate root of a `cdylib` crate:
///
/// ```ignore
/// dispatch_abi::export_plugin!(MyPlugin);
/// ```
///
/// It exports the root module the host loads (with every entry point wrapped
/// so that no panic crosses the boundary) and the `dispatch_abi_version`
/// symbol the host reads to name ABI mismatches. Your crate needs no direct
/// dependency on `abi_stable`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The ABI version this library was built against (read by the host
        /// before anything else).
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static dispatch_abi_version: u32 = $crate::ffi::ABI_VERSION;

        const _: () = {
            use $crate::__private::abi_stable;

            // What `#[abi_stable::export_root_module]` expands to, spelled
            // with `$crate` paths so plugin crates need not name abi_stable.
            // The symbol name is checked against abi_stable's in this crate's
            // tests.
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static __DISPATCH_LIB_HEADER: abi_stable::library::LibHeader = {
                extern "C" fn __erased() -> abi_stable::library::RootModuleResult {
                    abi_stable::library::__call_root_module_loader(dispatch_root_module)
                }
                // SAFETY: the constructor is the one generated for exactly
                // this module type, as `export_root_module` does.
                unsafe {
                    abi_stable::library::LibHeader::from_constructor::<$crate::ffi::PluginModRef>(
                        __erased,
                        abi_stable::library::CheckTypeLayout::Yes,
                    )
                }
            };
        };

        /// The root module, for in-process use of this plugin through its
        /// `rlib` (tests, embedding) without loading the `.so`.
        pub fn dispatch_root_module() -> $crate::ffi::PluginModRef {
            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait as _;
            extern "C" fn manifest() -> $crate::__private::ManifestResult {
                $crate::plugin::manifest_entry::<$plugin>()
            }
            extern "C" fn activate(
                host: $crate::ffi::HostApiBox,
                config: $crate::__private::RString,
            ) -> $crate::__private::ActivateResult {
                $crate::plugin::activate_entry::<$plugin>(host, config)
            }
            $crate::ffi::PluginMod { manifest, activate }.leak_into_prefix()
        }
    };
}
