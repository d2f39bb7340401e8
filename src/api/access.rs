//! Guards for admin routes. A handler names its route family in its signature:
//! `Allowed<family::CreditOperations>` lets in only roles with full access to the family;
//! `Scoped<family::UsageAnalytics>` also lets in a narrowed role and hands the handler
//! the [`Access`] it must apply. The decision itself is `security::access`'s table.
//! No token (or a bad one) → 401 from [`Authenticated`]; a role the table refuses → 403
//! `FORBIDDEN`, before the body is read.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract::Authenticated;
use crate::events::auth::Role;
use crate::security::access::{Access, COLUMNS, RouteFamily, access};
use crate::security::tokens::AccessClaims;

/// A route family named as a type, so a handler's signature says which one it is in.
pub trait Family: Send + Sync + 'static {
    const FAMILY: RouteFamily;
}

/// One marker type per [`RouteFamily`].
pub mod family {
    use super::{Family, RouteFamily};

    macro_rules! families {
        ($($name:ident),* $(,)?) => {$(
            #[doc = concat!("The `", stringify!($name), "` route family.")]
            pub struct $name;
            impl Family for $name {
                const FAMILY: RouteFamily = RouteFamily::$name;
            }
        )*};
    }

    families!(AuditLog, AdminRead, UsageAnalytics, CreditOperations, UserAdministration);
}

/// A caller with full access to the family `F`; any other role is refused with 403.
pub struct Allowed<F> {
    pub claims: AccessClaims,
    family: PhantomData<F>,
}

/// A caller with full or narrowed access to the family `F`. The handler must honour
/// `access`: `UserTransactionsOnly` reaches only a user's transactions, `OwnAppOnly`
/// only the caller's own app.
pub struct Scoped<F> {
    pub claims: AccessClaims,
    pub access: Access,
    family: PhantomData<F>,
}

impl<F: Family> FromRequestParts<AppState> for Allowed<F> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Authenticated(claims) = Authenticated::from_request_parts(parts, state).await?;
        match access(claims.role, F::FAMILY) {
            Access::Full => Ok(Self { claims, family: PhantomData }),
            _ => Err(forbidden(claims.role, F::FAMILY, |grant| grant == Access::Full)),
        }
    }
}

impl<F: Family> FromRequestParts<AppState> for Scoped<F> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Authenticated(claims) = Authenticated::from_request_parts(parts, state).await?;
        match access(claims.role, F::FAMILY) {
            Access::Denied => Err(forbidden(claims.role, F::FAMILY, |grant| grant != Access::Denied)),
            grant => Ok(Self { claims, access: grant, family: PhantomData }),
        }
    }
}

/// 403 naming the roles that this route admits.
fn forbidden(role: Role, family: RouteFamily, admits: impl Fn(Access) -> bool) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, refusal(role, family, admits))
}

fn refusal(role: Role, family: RouteFamily, admits: impl Fn(Access) -> bool) -> String {
    let roles: Vec<&str> =
        COLUMNS.iter().filter(|&&other| admits(access(other, family))).map(|other| other.as_str()).collect();
    format!(
        "The role {} may not use this route ({}: {})",
        role.as_str(),
        family.title().to_lowercase(),
        roles.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_callers_role_and_the_roles_this_route_admits() {
        assert_eq!(
            refusal(Role::Auditor, RouteFamily::CreditOperations, |grant| grant == Access::Full),
            "The role auditor may not use this route (credit operations: admin, service)"
        );
        assert_eq!(
            refusal(Role::User, RouteFamily::UsageAnalytics, |grant| grant != Access::Denied),
            "The role user may not use this route (usage analytics: admin, auditor, service)"
        );
    }
}
