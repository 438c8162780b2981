//! One method list per backend trait. `store::with_store_methods!` and
//! `cache::with_cache_methods!` hold each trait's methods once; the trait is declared from its
//! list ([`backend_trait!`]), and so is every decorator (`metrics::timed_decorator!`, the test
//! kit's fault injector). A new method is written in the list and in each backend, and
//! nowhere else.
//!
//! A list entry is a method of `&self` with its docs; `= value` after the return type is what
//! the caller sees when a Cache write is lost (the fault injector's *drop*).

/// Declares an `async_trait` trait `Send + Sync + 'static` with `fn backend(&self)` and every
/// listed method.
macro_rules! backend_trait {
    (
        $(#[$trait_attr:meta])* $vis:vis trait $trait_name:ident;
        $( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $argty:ty)* ) -> $ret:ty $(= $dropped:expr)?; )*
    ) => {
        $(#[$trait_attr])*
        #[async_trait::async_trait]
        $vis trait $trait_name: Send + Sync + 'static {
            /// A short name for metrics and logs.
            fn backend(&self) -> &'static str;
            $( $(#[$attr])* async fn $name(&self $(, $arg: $argty)*) -> $ret; )*
        }
    };
}
pub(crate) use backend_trait;
