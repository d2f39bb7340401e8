//! A small JSON client for black-box tests against any base URL.

use reqwest::StatusCode;
use serde_json::{Value, json};

/// A client bound to one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// What a request answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The body's string field `name`.
    pub fn text(&self, name: &str) -> String {
        self.body[name].as_str().unwrap_or_else(|| panic!("no {name} in {}", self.body)).to_owned()
    }
}

/// The password tests register with.
pub const PASSWORD: &str = "correct horse battery staple";

impl Api {
    pub fn new(base: &str) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), http: reqwest::Client::new() }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Answer { status, headers, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn post_auth(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).bearer_auth(token).json(&body)).await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(token)).await
    }

    pub async fn delete_auth(&self, path: &str, token: &str) -> Answer {
        self.send(self.http.delete(format!("{}{path}", self.base)).bearer_auth(token)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// Registers `email`; panics unless 201.
    pub async fn register(&self, email: &str) -> Answer {
        let answer = self.post("/api/v1/auth/register", json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(answer.status, StatusCode::CREATED, "register {email}: {}", answer.body);
        answer
    }

    /// Logs in; returns the answer whatever it is.
    pub async fn login(&self, email: &str, password: &str) -> Answer {
        self.post("/api/v1/auth/login", json!({"email": email, "password": password})).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Answer {
        self.post("/api/v1/auth/refresh", json!({"refreshToken": refresh_token})).await
    }

    /// `/auth/validate`'s answer for a token.
    pub async fn validate(&self, token: &str) -> Value {
        let answer = self.post("/api/v1/auth/validate", json!({"token": token})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }
}

/// A unique e-mail address for one test.
pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}
