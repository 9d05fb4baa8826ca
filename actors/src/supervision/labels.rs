//! `labels!`: an enum whose every variant has a snake_case name, listed once.
//!
//! A reason enum used as a metric label needs three things that must agree: its variants, the
//! list of all of them (a counter per reason, each exposed whether zero or not), and each
//! one's name. Written by hand they drift: a variant missing from the list once panicked inside
//! the registry. Here all three come from one list, so a new variant cannot miss any of them.

/// Defines `enum $name` with one variant per `Variant => "name"` line (in order), and:
/// `ALL` (every variant, in declaration order), `COUNT`, `as_str` (the name), `from_name`,
/// `index` (the position in `ALL`, for per-variant counters) and `Display`.
macro_rules! labels {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[non_exhaustive]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order (metrics expose each one, zero or not).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// How many variants there are.
            pub const COUNT: usize = $name::ALL.len();

            /// The snake_case word used in metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The variant named `name`, if any.
            pub fn from_name(name: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == name)
            }

            /// Position in [`ALL`](Self::ALL), for per-variant counters: the discriminants
            /// follow the declaration order, which `ALL` is generated in.
            #[allow(dead_code)] // not every such enum is counted per variant
            pub(crate) fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use labels;

#[cfg(test)]
#[allow(unreachable_pub)] // the sample enum is the macro's output, made for this test
mod tests {
    labels! {
        /// A test enum.
        pub enum Sample {
            /// One.
            One => "one",
            /// Two words.
            TwoWords => "two_words",
        }
    }

    #[test]
    fn every_variant_is_listed_named_and_indexed_in_order() {
        assert_eq!(Sample::COUNT, 2);
        assert_eq!(Sample::ALL, &[Sample::One, Sample::TwoWords]);
        for (i, v) in Sample::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
            assert_eq!(Sample::from_name(v.as_str()), Some(*v));
        }
        assert_eq!(Sample::TwoWords.to_string(), "two_words");
        assert_eq!(Sample::from_name("three"), None);
    }
}
