//! Who may call which admin route: the role table of docs/API.md ("Roles and admin
//! routes"), held once in code. Every admin route belongs to one [`RouteFamily`];
//! [`access`] decides what a role gets in a family. A unit test compares this table with
//! the document, so neither can drift.

use crate::events::auth::Role;

/// A group of admin routes that the role table treats alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteFamily {
    /// The log itself: listing, export and verification of events.
    AuditLog,
    /// Read-only views of users, balances, transactions, security events, sessions,
    /// purchases and the trial balance.
    AdminRead,
    /// Usage figures per app.
    UsageAnalytics,
    /// Grants, adjustments and refunds of credits.
    CreditOperations,
    /// Changing users or roles, erasing a user.
    UserAdministration,
}

impl RouteFamily {
    /// Every family, in the order of the table in docs/API.md.
    pub const ALL: [Self; 5] = [
        Self::AuditLog,
        Self::AdminRead,
        Self::UsageAnalytics,
        Self::CreditOperations,
        Self::UserAdministration,
    ];

    /// The family's name as docs/API.md writes it (in bold at the start of its row).
    pub fn title(self) -> &'static str {
        match self {
            Self::AuditLog => "Audit log",
            Self::AdminRead => "Admin reads",
            Self::UsageAnalytics => "Usage analytics",
            Self::CreditOperations => "Credit operations",
            Self::UserAdministration => "User administration",
        }
    }
}

/// What a role gets in a family of routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Every route of the family, unrestricted.
    Full,
    /// Of the admin reads, only the transactions of one user; every other read is 403.
    UserTransactionsOnly,
    /// Only the figures of the caller's own app; another app's are 403.
    OwnAppOnly,
    /// Nothing: 403 `FORBIDDEN`.
    Denied,
}

impl Access {
    /// The cell of the table in docs/API.md that says this.
    pub fn cell(self) -> &'static str {
        match self {
            Self::Full => "✔",
            Self::UserTransactionsOnly => "transactions of a user only",
            Self::OwnAppOnly => "its own app only",
            Self::Denied => "403",
        }
    }

    /// Whether this is a narrowed grant, which only a route that applies the narrowing
    /// may accept.
    pub fn is_narrowed(self) -> bool {
        matches!(self, Self::UserTransactionsOnly | Self::OwnAppOnly)
    }
}

/// The role table: what `role` gets in `family`.
pub fn access(role: Role, family: RouteFamily) -> Access {
    use Access::{Denied, Full, OwnAppOnly, UserTransactionsOnly};
    use RouteFamily::{AdminRead, AuditLog, CreditOperations, UsageAnalytics, UserAdministration};
    match (family, role) {
        (_, Role::User) => Denied,
        (_, Role::Admin) => Full,
        (AuditLog | AdminRead | UsageAnalytics, Role::Auditor) => Full,
        (CreditOperations | UserAdministration, Role::Auditor) => Denied,
        (AuditLog | UserAdministration, Role::Service) => Denied,
        (AdminRead, Role::Service) => UserTransactionsOnly,
        (UsageAnalytics, Role::Service) => OwnAppOnly,
        (CreditOperations, Role::Service) => Full,
    }
}

/// The roles in the order of the table's columns in docs/API.md.
pub const COLUMNS: [Role; 4] = [Role::Admin, Role::Auditor, Role::Service, Role::User];

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the role table in docs/API.md, between the `roles:begin` and
    /// `roles:end` markers: the header's cells, then (family name, cells) per row.
    fn documented_table() -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
        let doc = std::fs::read_to_string(path).expect("docs/API.md");
        let start = doc.find("<!-- roles:begin -->").expect("a roles:begin marker in docs/API.md");
        let end = doc.find("<!-- roles:end -->").expect("a roles:end marker in docs/API.md");
        let cells = |line: &str| -> Vec<String> {
            line.trim().trim_matches('|').split('|').map(|cell| cell.trim().to_owned()).collect()
        };
        let mut rows = doc[start..end].lines().filter(|line| line.trim_start().starts_with('|'));
        let header = cells(rows.next().expect("a header row"));
        let body = rows
            .filter(|line| !line.contains("---"))
            .map(|line| {
                let mut row = cells(line);
                let first = row.remove(0);
                let name = first
                    .strip_prefix("**")
                    .and_then(|rest| rest.split_once("**"))
                    .map(|(name, _)| name.to_owned())
                    .unwrap_or_else(|| panic!("a row must start with its family in bold: {line}"));
                (name, row)
            })
            .collect();
        (header, body)
    }

    #[test]
    fn the_role_table_in_the_code_equals_the_table_in_docs_api_md() {
        let (header, rows) = documented_table();
        let columns: Vec<&str> = COLUMNS.iter().map(|role| role.as_str()).collect();
        assert_eq!(header[1..], columns, "the columns are the roles, in this order");
        let expected: Vec<(String, Vec<String>)> = RouteFamily::ALL
            .iter()
            .map(|&family| {
                let cells = COLUMNS.iter().map(|&role| access(role, family).cell().to_owned()).collect();
                (family.title().to_owned(), cells)
            })
            .collect();
        assert_eq!(rows, expected, "docs/API.md's role table and security::access disagree");
    }

    #[test]
    fn users_get_no_admin_route_and_admins_get_every_one_in_full() {
        for family in RouteFamily::ALL {
            assert_eq!(access(Role::User, family), Access::Denied, "{family:?}");
            assert_eq!(access(Role::Admin, family), Access::Full, "{family:?}");
        }
    }

    #[test]
    fn auditors_read_everything_and_change_nothing() {
        for family in RouteFamily::ALL {
            let reads = matches!(
                family,
                RouteFamily::AuditLog | RouteFamily::AdminRead | RouteFamily::UsageAnalytics
            );
            let expected = if reads { Access::Full } else { Access::Denied };
            assert_eq!(access(Role::Auditor, family), expected, "{family:?}");
        }
    }

    #[test]
    fn only_the_narrowed_grants_are_narrowed() {
        let narrowed: Vec<Access> = RouteFamily::ALL
            .iter()
            .flat_map(|&family| COLUMNS.iter().map(move |&role| access(role, family)))
            .filter(|grant| grant.is_narrowed())
            .collect();
        assert_eq!(narrowed, [Access::UserTransactionsOnly, Access::OwnAppOnly]);
    }
}
