//! The one way the workspace writes `with_*` builders on its configs.

/// Writes `with_*` builders, one per field: `with_x(mut self, x) -> Self`
/// sets `self.x` (or a nested `self.part.x`). Every config of the workspace
/// (norms, models, training) gets its builders from this, so they read and
/// behave alike.
///
/// ```
/// #[derive(Default)]
/// struct Config {
///     /// Steps. Default 0.
///     steps: usize,
///     inner: Inner,
/// }
/// #[derive(Default)]
/// struct Inner {
///     rate: f64,
/// }
/// impl Config {
///     cnn_tensor::setters! {
///         /// Sets the steps.
///         with_steps: steps: usize;
///         /// Sets the inner rate.
///         with_rate: inner.rate: f64;
///     }
/// }
/// let c = Config::default().with_steps(3).with_rate(0.5);
/// assert_eq!((c.steps, c.inner.rate), (3, 0.5));
/// ```
#[macro_export]
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $($field:ident).+: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$($field).+ = value;
                self
            }
        )*
    };
}
