//! Validate step of a subject: the spec checks of [`crate::validate::subject`]. A
//! [`ValidatedSubject`] is made only here.

use crate::error::Error;
use kube::ResourceExt;
use qis_crds::QisSubject;

/// A subject whose spec passed the checks.
#[derive(Debug)]
pub struct ValidatedSubject<'a> {
    pub subject: &'a QisSubject,
    pub namespace: String,
    pub name: String,
}

/// Checks `subject`.
pub fn subject(subject: &QisSubject) -> Result<ValidatedSubject<'_>, Error> {
    crate::validate::subject(&subject.spec)?;
    Ok(ValidatedSubject {
        namespace: subject.namespace().unwrap_or_default(),
        name: subject.name_any(),
        subject,
    })
}
