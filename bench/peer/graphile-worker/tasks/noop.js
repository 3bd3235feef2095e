// The no-op job: does nothing and succeeds.
module.exports = async () => {};
