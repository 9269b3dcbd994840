//! The Envoy dynamic-module adapter (native builds): `target/release/liboutgoing_auth.so`, loaded
//! by `envoy.filters.http.dynamic_modules`. [`abi`] is the ABI (the crate's only `unsafe`);
//! [`filter`] drives the core from its hooks.

#[allow(unsafe_code)]
mod abi;
mod filter;
