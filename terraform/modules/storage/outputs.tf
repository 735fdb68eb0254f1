output "bucket_name" {
  description = "The artifact bucket's name."
  value       = aws_s3_bucket.artifacts.id
}

output "bucket_arn" {
  description = "The artifact bucket's ARN."
  value       = aws_s3_bucket.artifacts.arn
}

output "log_bucket_name" {
  description = "The bucket that receives the artifact bucket's access logs."
  value       = aws_s3_bucket.logs.id
}

output "kms_key_arn" {
  description = "The key that encrypts the artifact bucket and the agent's private key in SSM."
  value       = aws_kms_key.artifacts.arn
}

output "kms_key_alias" {
  description = "The key's alias, for aws ssm put-parameter --key-id."
  value       = aws_kms_alias.artifacts.name
}
