//! Reference teacher EMA: teacher ← m·teacher + (1 − m)·student, in place.

pub fn ema_update(teacher: &mut [f64], student: &[f64], momentum: f64) {
    for (t, s) in teacher.iter_mut().zip(student) {
        *t = momentum * *t + (1.0 - momentum) * s;
    }
}
